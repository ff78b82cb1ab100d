//! The failure policy and shadow mode, end to end through the built `.wasm`:
//! every failure class of the policy server × deny / deny:<status> / allow ×
//! a listed and an unlisted method × response hook off and on; what the
//! upstream and the policy server received; shadow mode with every reply
//! kind; configuration refusals.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use common::*;
use ping_auth_harness::emulator::ClientResponse;
use ping_auth_harness::http::{Request, Response};
use serde_json::{json, Value};

const MARKER: &str = "x-ping-auth-fail-open";

/// A policy server's answer to every call.
type Policy = fn(&Request) -> Response;
/// What a client received: status, headers, body (see [`client_view`]).
type ClientView = (u16, Vec<(String, String)>, String);

/// The classes, each with the policy server that produces it (`None`: a
/// closed port) and the status a plain `deny` answers.
fn classes() -> Vec<(&'static str, Option<Policy>, u16)> {
    vec![
        ("unreachable", None, 502),
        (
            "server_error",
            Some(|_: &Request| Response::json(503, &json!({"message": "down"}))),
            502,
        ),
        (
            "client_error",
            Some(|_: &Request| Response::json(401, &json!({"message": "secret"}))),
            502,
        ),
        (
            "malformed_reply",
            Some(|_: &Request| Response::new(200).with_body("<html>not json</html>")),
            502,
        ),
        (
            "rate_limited",
            Some(|_: &Request| Response::new(429).with_header("retry-after", "1")),
            429,
        ),
    ]
}

fn env_for(handler: Option<Policy>, extra: Value) -> Env {
    match handler {
        Some(h) => Env::new(h, extra),
        None => {
            let closed = closed_port();
            Env::with_config(allow_all, move |_| config(closed, extra))
        }
    }
}

fn upstream_markers(env: &Env) -> Vec<Vec<String>> {
    env.upstream
        .requests()
        .iter()
        .map(|r| req_header(r, MARKER))
        .collect()
}

#[test]
fn every_class_by_action_method_and_hook() {
    for (class, handler, deny_status) in classes() {
        for hook in [false, true] {
            for action in ["deny", "deny:503", "allow"] {
                let what = format!("{class} {action} hook {hook}");
                let field = format!("on_{class}");
                let mut extra = json!({"enable_response_hook": hook});
                extra[field.as_str()] = json!(action);
                let mut env = env_for(handler, extra);
                // A listed method (GET), with a forged marker.
                let resp = env.send(with_header(get("/x"), MARKER, "forged"));
                assert!(!resp.trapped, "{what}");
                match action {
                    "allow" => {
                        assert_eq!(resp.status, 200, "{what}");
                        assert_eq!(
                            upstream_markers(&env),
                            vec![vec![class.to_string()]],
                            "{what}"
                        );
                        assert!(
                            env.log_contains(&format!("fail-open: class={class} method=GET")),
                            "{what}"
                        );
                    }
                    "deny:503" => {
                        assert_eq!(resp.status, 503, "{what}");
                        assert!(env.upstream.requests().is_empty(), "{what}");
                    }
                    _ => {
                        assert_eq!(resp.status, deny_status, "{what}");
                        assert!(env.upstream.requests().is_empty(), "{what}");
                    }
                }
                // The policy server never sees the marker.
                for p in env.pdp.request_payloads() {
                    assert!(
                        payload_headers(&p).iter().all(|(n, _)| n != MARKER),
                        "{what}"
                    );
                }
                // An unlisted method (POST): denied whatever the action.
                let before = env.upstream.requests().len();
                let resp = env.send(post("/x", b"{}"));
                let want = if action == "deny:503" {
                    503
                } else {
                    deny_status
                };
                assert_eq!(resp.status, want, "{what} POST");
                assert_eq!(env.upstream.requests().len(), before, "{what} POST");
            }
        }
    }
}

#[test]
fn listed_methods_and_header_name_are_configurable() {
    let mut env = Env::new(
        |_: &Request| Response::json(500, &json!({})),
        json!({"enable_response_hook": false, "on_server_error": "allow",
               "fail_open_methods": "POST", "fail_open_header": "X-Bypassed"}),
    );
    assert_eq!(env.send(post("/x", b"{}")).status, 200);
    assert_eq!(
        req_header(&env.upstream.requests()[0], "x-bypassed"),
        ["server_error"]
    );
    assert_eq!(env.send(get("/x")).status, 502);
    assert_eq!(env.upstream.requests().len(), 1);
}

/// A client's own marker never reaches the upstream as sent: with the hook
/// on it is dropped; with the hook off the host cannot remove a request
/// header, so it is blanked (and warned).
#[test]
fn a_forged_marker_is_removed_or_blanked() {
    for hook in [false, true] {
        let mut env = Env::new(allow_all, json!({"enable_response_hook": hook}));
        let resp = env.send(with_header(get("/x"), MARKER, "server_error"));
        assert_eq!(resp.status, 200);
        let seen = upstream_markers(&env);
        let want: Vec<Vec<String>> = if hook {
            vec![vec![]]
        } else {
            vec![vec![String::new()]]
        };
        assert_eq!(seen, want, "hook {hook}");
        assert!(payload_headers(&env.pdp.request_payloads()[0])
            .iter()
            .all(|(n, _)| n != MARKER));
    }
}

/// With the hook on, a failing `/sideband/response` lets the upstream's
/// response through unchanged when its class is `allow`.
#[test]
fn the_response_call_follows_the_same_policy() {
    let handler = |req: &Request| {
        if req.path().ends_with("/sideband/response") {
            Response::json(500, &json!({"message": "boom"}))
        } else {
            Response::json(200, &echo(req))
        }
    };
    let mut env = Env::new(handler, json!({"on_server_error": "allow"}));
    let resp = env.send(get("/x"));
    assert_eq!(resp.status, 200);
    assert_eq!(env.upstream.requests().len(), 1);
    assert!(env.log_contains("fail-open: class=server_error method=GET"));
    let mut env = Env::new(handler, json!({}));
    assert_eq!(env.send(get("/x")).status, 502);
}

type Seen = (String, String, Vec<(String, String)>, Vec<u8>);

/// Kong's per-request values (request id, latencies) written `ID`, and the
/// upstream's port `PORT` (each test environment has its own upstream).
fn normalise(text: &str, port: &str) -> String {
    let mut out = text.replace(port, "PORT");
    // Request ids: 32 hex digits.
    let bytes: Vec<char> = out.chars().collect();
    let mut cleaned = String::with_capacity(out.len());
    let mut i = 0;
    while i < bytes.len() {
        let run = bytes[i..]
            .iter()
            .take_while(|c| c.is_ascii_hexdigit())
            .count();
        if run == 32 {
            cleaned.push_str("ID");
            i += run;
        } else {
            cleaned.push(bytes[i]);
            i += 1;
        }
    }
    out = cleaned;
    out
}

/// What an upstream received (see [`normalise`]).
fn what_the_upstream_got(upstream: &ping_auth_harness::upstream::Upstream) -> Vec<Seen> {
    let port = upstream.addr().port().to_string();
    let norm = |b: &[u8]| normalise(&String::from_utf8_lossy(b), &port);
    upstream
        .requests()
        .iter()
        .map(|r| {
            let headers = r
                .headers
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), norm(v)))
                .collect();
            (
                r.method.clone(),
                r.target.clone(),
                headers,
                norm(&r.body).into_bytes(),
            )
        })
        .collect()
}

/// What the client received, without `Date` and Kong's latency headers
/// (see [`normalise`]; the echo upstream echoes its request).
fn client_view(resp: &ClientResponse, upstream_port: u16) -> ClientView {
    let port = upstream_port.to_string();
    let headers = resp
        .headers
        .iter()
        .filter(|(n, _)| {
            !n.eq_ignore_ascii_case("date") && !n.to_ascii_lowercase().ends_with("-latency")
        })
        .map(|(n, v)| {
            (
                n.to_ascii_lowercase(),
                normalise(&String::from_utf8_lossy(v), &port),
            )
        })
        .collect();
    (
        resp.status,
        headers,
        normalise(&String::from_utf8_lossy(&resp.body), &port),
    )
}

/// The same request through Kong without the filter.
fn without_filter(req: ping_auth_harness::emulator::ClientRequest) -> (Vec<Seen>, ClientView) {
    let up = upstream();
    let mut emu = bare_emulator();
    let chain = emu
        .add_chain(service(up.addr().port()), route(), vec![])
        .unwrap();
    let resp = emu.send(chain, req);
    (
        what_the_upstream_got(&up),
        client_view(&resp, up.addr().port()),
    )
}

/// Shadow mode, response hook off: with every kind of reply the upstream
/// receives exactly what it receives with the filter answering "allow
/// unchanged", and the client gets the same response; the policy server is
/// called every time, and one `shadow:` line per request says what would
/// have happened.
#[test]
fn shadow_mode_changes_nothing_whatever_the_policy_answers() {
    let replies: Vec<(&str, Policy)> = vec![
        ("decision=deny status=403", |_| {
            Response::json(
                200,
                &json!({"response": {"response_code": 403, "headers": [], "body": "no"}}),
            )
        }),
        ("decision=allow status=- directives=headers,method", |req| {
            let mut v = echo(req);
            v["method"] = json!("PUT");
            v["headers"] = json!([{"x-user": "alice"}]);
            Response::json(200, &v)
        }),
        (
            "decision=fail status=502 directives=- class=server_error",
            |_| Response::json(500, &json!({})),
        ),
        (
            "decision=fail status=502 directives=- class=client_error",
            |_| Response::json(401, &json!({})),
        ),
        (
            "decision=fail status=502 directives=- class=malformed_reply",
            |_| Response::new(200).with_body("[]"),
        ),
        (
            "decision=fail status=429 directives=- class=rate_limited",
            |_| Response::new(429),
        ),
    ];
    let request = || {
        with_header(
            with_header(get("/things?b=2&a=1"), "accept-encoding", "gzip"),
            "x-client",
            "c",
        )
    };
    let (baseline, base_client) = without_filter(request());
    assert_eq!(baseline.len(), 1);
    for (line, handler) in replies {
        let mut env = Env::new(
            handler,
            json!({"mode": "shadow", "enable_response_hook": false}),
        );
        let resp = env.send(request());
        let port = env.upstream.addr().port();
        assert_eq!(client_view(&resp, port), base_client, "{line}");
        assert_eq!(what_the_upstream_got(&env.upstream), baseline, "{line}");
        assert_eq!(env.pdp.calls("/sideband/request").len(), 1, "{line}");
        let shadow: Vec<String> = env
            .logs()
            .into_iter()
            .filter(|l| l.starts_with("shadow:"))
            .collect();
        assert_eq!(shadow.len(), 1, "{line}: {shadow:?}");
        assert!(
            shadow[0].starts_with("shadow: decision=") && shadow[0].contains(line),
            "{line}: {shadow:?}"
        );
        assert!(shadow[0].contains("latency_ms="));
    }
    // Unreachable.
    let closed = closed_port();
    let mut env = Env::with_config(allow_all, move |_| {
        config(
            closed,
            json!({"mode": "shadow", "enable_response_hook": false}),
        )
    });
    let resp = env.send(request());
    assert_eq!(client_view(&resp, env.upstream.addr().port()), base_client);
    assert!(env.log_contains("shadow: decision=fail status=502 directives=- class=unreachable"));
}

/// Shadow mode with the response hook: the real response is posted to
/// `/sideband/response`, its reply discarded, and the client gets the
/// upstream's response; the upstream gets the client's request unchanged.
#[test]
fn shadow_mode_with_the_hook_posts_the_real_response_and_keeps_it() {
    let handler = |req: &Request| {
        if req.path().ends_with("/sideband/response") {
            Response::json(
                200,
                &json!({"response_code": 451, "headers": [], "body": "policy"}),
            )
        } else {
            let mut v = echo(req);
            v["headers"] = json!([{"x-user": "alice"}]);
            Response::json(200, &v)
        }
    };
    let mut env = Env::new(handler, json!({"mode": "shadow"}));
    let resp = env.send(with_header(get("/x?y=1"), "x-client", "c"));
    assert_eq!(resp.status, 200);
    let up = &env.upstream.requests()[0];
    assert_eq!(req_header(up, "x-client"), ["c"]);
    assert!(req_header(up, "x-user").is_empty());
    let posted = env.pdp.response_payloads();
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0]["response_code"], "200");
    assert_eq!(
        posted[0]["body"].as_str().unwrap().as_bytes(),
        resp.body.as_slice()
    );
    let shadow: Vec<String> = env
        .logs()
        .into_iter()
        .filter(|l| l.starts_with("shadow:"))
        .collect();
    assert_eq!(shadow.len(), 1, "one line per request: {shadow:?}");
    assert!(
        shadow[0].contains("response_decision=replace response_status=451"),
        "{shadow:?}"
    );
    assert!(env.log_contains("shadow: decision=allow status=- directives=headers"));
}

#[test]
fn bad_policy_settings_are_refused_with_one_line_each() {
    let mut emu = bare_emulator();
    for (extra, field, reason) in [
        (
            json!({"mode": "dry-run"}),
            "mode",
            "must be \"enforce\" or \"shadow\"",
        ),
        (
            json!({"on_unreachable": "open"}),
            "on_unreachable",
            "must be \"deny\", \"deny:<status 400-599>\" or \"allow\"",
        ),
        (
            json!({"on_server_error": "deny:200"}),
            "on_server_error",
            "deny:<status 400-599>",
        ),
        (
            json!({"fail_open_methods": "get,head"}),
            "fail_open_methods",
            "upper-case method names",
        ),
        (
            json!({"fail_open_header": "x open"}),
            "fail_open_header",
            "valid HTTP header name",
        ),
    ] {
        assert!(
            refused_config(&mut emu, &config(1, extra)).contains(field),
            "{field}"
        );
        let lines: Vec<String> = emu
            .logs()
            .iter()
            .map(|l| l.message.clone())
            .filter(|m| m.contains(&format!("invalid configuration: field '{field}'")))
            .collect();
        assert_eq!(lines.len(), 1, "{field}: {lines:?}");
        assert!(lines[0].contains(reason), "{}", lines[0]);
    }
}

/// Shadow mode does not remove the policy server's latency: the request is
/// held until the reply (a call is answered to the paused request that made
/// it; with the response hook, the local reply that carries the upstream's
/// response cancels pending calls, so `/sideband/response` must finish
/// first).
#[test]
fn shadow_mode_waits_for_the_policy_server() {
    for hook in [false, true] {
        let mut env = Env::new(
            |req: &Request| allow_all(req).with_delay(std::time::Duration::from_millis(400)),
            json!({"mode": "shadow", "enable_response_hook": hook}),
        );
        let started = std::time::Instant::now();
        let resp = env.send(get("/x"));
        let waited = started.elapsed();
        assert_eq!(resp.status, 200, "hook {hook}");
        let calls = if hook { 2 } else { 1 };
        assert_eq!(env.pdp.requests().len(), calls, "hook {hook}");
        assert!(
            waited >= std::time::Duration::from_millis(400 * calls as u64),
            "hook {hook}: answered after {waited:?}"
        );
    }
}
