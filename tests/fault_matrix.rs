//! The fault matrix: every way the policy server or the upstream can fail on
//! the wire, through the built `.wasm` in the emulator, with the response hook
//! on and off and a client request with and without a body. Each row asserts
//! what a user sees (docs/sideband-protocol.md#errors, README "Errors"):
//!
//! - the client's status (and, for the filter's own error replies, an empty
//!   body);
//! - after a policy-server failure on `/sideband/request`, the upstream is
//!   never reached (the echo upstream recorded nothing and Kong proxied
//!   nothing);
//! - after an upstream failure, `/sideband/response` is not called;
//! - no log line carries the shared secret: every emulator line (debug
//!   logging is on, so the exchange dumps are among them), the policy
//!   server's log and the fault server's log are scanned for it, and the
//!   policy server is checked to have received it.
//!
//! Faults are played by [`FaultServer`] (raw bytes, stalls, resets), a port
//! nothing listens on, or a TLS server whose certificate the host does not
//! trust. Each case gets its own servers and emulator; the cases run on a few
//! threads so that the timeout rows (500 ms) overlap.
//!
//! The rows on duplicate members and on values the filter cannot read were
//! fail-open until this matrix found them (the filter let the request
//! through with 200); they are refused with 502 now.
//!
//! `cargo test --test fault_matrix -- --nocapture` prints one line per case
//! (`<faulty side> | <row> | hook on/off | GET/POST -> <status>`). `FAULT_MATRIX_ONLY=<text>` runs only the cases whose line
//! contains the text; `FAULT_MATRIX_LOGS=<text>` prints the log lines of
//! those cases.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use common::*;
use ping_auth_harness::certs::TestPki;
use ping_auth_harness::emulator::{ClientRequest, ClientResponse, HostOptions, LogLevel};
use ping_auth_harness::fault_server::{raw_response, Fault, FaultServer, Received};
use ping_auth_harness::policy::{Policy, PolicyServer};
use ping_auth_harness::upstream::Upstream;
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A secret no log line can contain by accident.
const SECRET: &str = "fm-Sh4red-s3cret-9b1e47d2";
/// `connection_timeout_ms`, `upstream_timeout_ms` and the service's timeouts.
const TIMEOUT_MS: u64 = 500;
/// Stalls outlast every timeout; the fault server's drop ends them.
const HOLD: Duration = Duration::from_secs(10);
/// `max_response_body_bytes` of the upstream rows.
const MAX_BODY: usize = 16 * 1024;
/// The size of the "oversized" policy reply body.
const BIG: usize = 2 * 1024 * 1024;
/// The client body of the "with body" cases.
const CLIENT_BODY: &[u8] = br#"{"amount":5}"#;
/// Worker threads for the cases.
const THREADS: usize = 4;

// ---------------------------------------------------------------------------
// Building faulty replies
// ---------------------------------------------------------------------------

fn is_response_call(r: &Received) -> bool {
    r.path().ends_with("/sideband/response")
}

/// The reply that changes nothing: for `/sideband/request` the payload
/// itself (an allow), for `/sideband/response` the upstream response.
fn neutral(r: &Received) -> Value {
    let v = r.json().unwrap_or(Value::Null);
    if is_response_call(r) {
        json!({
            "response_code": v["response_code"],
            "response_status": v["response_status"],
            "headers": v["headers"],
            "body": v["body"],
        })
    } else {
        v
    }
}

fn reply_json(body: &[u8]) -> Fault {
    Fault::Reply(raw_response(
        200,
        &[("Content-Type", "application/json")],
        body,
    ))
}

fn status_json(status: u16, body: &str) -> Fault {
    Fault::Reply(raw_response(
        status,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    ))
}

fn neutral_reply(r: &Received) -> Fault {
    reply_json(neutral(r).to_string().as_bytes())
}

/// `v` (an object) without `drop`, with `extra` raw members appended:
/// `extra` is JSON text such as `"a":1,"a":2` (duplicates, huge numbers and
/// other things `serde_json::Value` cannot hold).
fn object_with(v: &Value, drop: &[&str], extra: &[u8]) -> Vec<u8> {
    let mut v = v.clone();
    for name in drop {
        v.as_object_mut().unwrap().remove(*name);
    }
    let mut text = v.to_string().into_bytes();
    assert_eq!(text.pop(), Some(b'}'));
    if !extra.is_empty() {
        if text.len() > 1 {
            text.push(b',');
        }
        text.extend_from_slice(extra);
    }
    text.push(b'}');
    text
}

fn nested_arrays(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// The neutral reply's `headers` plus `{"x-injected":"1"}`.
fn headers_plus_injected(r: &Received) -> String {
    let mut headers = neutral(r)["headers"].clone();
    headers
        .as_array_mut()
        .unwrap()
        .push(json!({"x-injected": "1"}));
    headers.to_string()
}

const DENY: &str = r#"{"response_code":"403","headers":[],"body":"denied"}"#;

/// Fault plays: each is the reply to the faulty call (the other call gets
/// the neutral reply).
mod play {
    use super::*;

    pub fn stall_before_head(_: &Received) -> Fault {
        Fault::Stall {
            bytes: Vec::new(),
            hold: HOLD,
        }
    }
    pub fn stall_mid_head(_: &Received) -> Fault {
        Fault::Stall {
            bytes: b"HTTP/1.1 200 OK\r\nContent-Type: applic".to_vec(),
            hold: HOLD,
        }
    }
    pub fn stall_after_head(_: &Received) -> Fault {
        Fault::Stall {
            bytes:
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                    .to_vec(),
            hold: HOLD,
        }
    }
    pub fn stall_mid_body(_: &Received) -> Fault {
        Fault::Stall {
            bytes: b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"source_ip\":\"10.0."
                .to_vec(),
            hold: HOLD,
        }
    }
    pub fn reset_at_once(_: &Received) -> Fault {
        Fault::Reset(Vec::new())
    }
    pub fn reset_mid_head(_: &Received) -> Fault {
        Fault::Reset(b"HTTP/1.1 200 OK\r\nContent-Ty".to_vec())
    }
    pub fn reset_mid_body(_: &Received) -> Fault {
        Fault::Reset(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"source_ip\":\"10.0."
                .to_vec(),
        )
    }
    pub fn close_mid_body(_: &Received) -> Fault {
        Fault::Reply(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"source_ip\":\"10.0."
                .to_vec(),
        )
    }
    pub fn truncated_chunk(_: &Received) -> Fault {
        Fault::Reply(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n40\r\n{\"source_ip\":\"10.0."
                .to_vec(),
        )
    }
    pub fn chunked_without_last_chunk(_: &Received) -> Fault {
        Fault::Reply(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n"
                .to_vec(),
        )
    }
    pub fn oversized_head(_: &Received) -> Fault {
        let big = "a".repeat(9000);
        Fault::Reply(raw_response(200, &[("X-Big", big.as_str())], b"{}"))
    }
    /// What a plain HTTP server answers to a TLS client hello.
    pub fn plain_http_to_tls(_: &Received) -> Fault {
        Fault::Reply(raw_response(
            400,
            &[("Content-Type", "text/plain")],
            b"not TLS",
        ))
    }
    pub fn continue_only(_: &Received) -> Fault {
        Fault::Reply(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
    }
    pub fn no_content(_: &Received) -> Fault {
        Fault::Reply(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_vec())
    }
    pub fn not_modified(_: &Received) -> Fault {
        Fault::Reply(b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n".to_vec())
    }
    pub fn server_error_503(_: &Received) -> Fault {
        status_json(503, r#"{"message":"down","id":"m1"}"#)
    }
    pub fn server_error_500_html(_: &Received) -> Fault {
        Fault::Reply(raw_response(
            500,
            &[("Content-Type", "text/html")],
            b"<html>oops</html>",
        ))
    }
    pub fn rejected_401(_: &Received) -> Fault {
        status_json(
            401,
            r#"{"message":"The Gateway Token is invalid","id":"m2"}"#,
        )
    }
    pub fn too_large_413(_: &Received) -> Fault {
        status_json(413, r#"{"message":"too big","id":"m3"}"#)
    }
    pub fn rate_limited_429(_: &Received) -> Fault {
        Fault::Reply(raw_response(429, &[("Retry-After", "7")], b"slow down"))
    }
    pub fn big_reply(r: &Received) -> Fault {
        let body = "x".repeat(BIG);
        let v = if is_response_call(r) {
            json!({"response_code": "200", "headers": [], "body": body})
        } else {
            json!({"response": {"response_code": "403", "headers": [], "body": body}})
        };
        reply_json(v.to_string().as_bytes())
    }
    pub fn not_json(_: &Received) -> Fault {
        reply_json(b"<html>oops</html>")
    }
    pub fn empty_200(_: &Received) -> Fault {
        reply_json(b"")
    }
    pub fn json_array(_: &Received) -> Fault {
        reply_json(b"[1,2]")
    }
    pub fn json_string(_: &Received) -> Fault {
        reply_json(b"\"allow\"")
    }
    pub fn json_number(_: &Received) -> Fault {
        reply_json(b"42")
    }
    pub fn response_is_a_number(_: &Received) -> Fault {
        reply_json(br#"{"response":5}"#)
    }
    pub fn missing_headers(r: &Received) -> Fault {
        reply_json(&object_with(&neutral(r), &["headers"], b""))
    }
    pub fn missing_response_code(r: &Received) -> Fault {
        if is_response_call(r) {
            reply_json(&object_with(&neutral(r), &["response_code"], b""))
        } else {
            reply_json(br#"{"response":{"headers":[],"body":"denied"}}"#)
        }
    }
    pub fn allow_missing_url(r: &Received) -> Fault {
        reply_json(&object_with(&neutral(r), &["url"], b""))
    }
    /// An allow (the echo) followed by a deny under the same name, then
    /// `false` again: which one counts depends on the parser.
    pub fn duplicate_response(r: &Received) -> Fault {
        let extra = format!(r#""response":{DENY},"response":false"#);
        reply_json(&object_with(&neutral(r), &[], extra.as_bytes()))
    }
    /// The neutral reply with a second `headers` member that adds a header.
    pub fn duplicate_headers(r: &Received) -> Fault {
        let extra = format!(r#""headers":{}"#, headers_plus_injected(r));
        let v = neutral(r);
        let first = format!(r#""headers":{}"#, v["headers"]);
        let extra = format!("{first},{extra}");
        reply_json(&object_with(&v, &["headers"], extra.as_bytes()))
    }
    /// A response reply with a redacted `body`, then the original under the
    /// same name.
    pub fn duplicate_body(r: &Received) -> Fault {
        let v = neutral(r);
        let extra = format!(r#""body":"***","body":{}"#, v["body"]);
        reply_json(&object_with(&v, &["body"], extra.as_bytes()))
    }
    pub fn deep_nesting(_: &Received) -> Fault {
        reply_json(nested_arrays(10_000).as_bytes())
    }
    /// The neutral reply with an extra member nested 10,000 deep.
    pub fn deep_member(r: &Received) -> Fault {
        let extra = format!(r#""x":{}"#, nested_arrays(10_000));
        reply_json(&object_with(&neutral(r), &[], extra.as_bytes()))
    }
    pub fn code_1e400(r: &Received) -> Fault {
        if is_response_call(r) {
            reply_json(&object_with(
                &neutral(r),
                &["response_code"],
                br#""response_code":1e400"#,
            ))
        } else {
            reply_json(br#"{"response":{"response_code":1e400,"headers":[],"body":"denied"}}"#)
        }
    }
    pub fn code_400_digits(r: &Received) -> Fault {
        let digits = format!(r#""response_code":4{}"#, "0".repeat(399));
        if is_response_call(r) {
            reply_json(&object_with(
                &neutral(r),
                &["response_code"],
                digits.as_bytes(),
            ))
        } else {
            let deny = format!(r#"{{"response":{{{digits},"headers":[],"body":"denied"}}}}"#);
            reply_json(deny.as_bytes())
        }
    }
    /// The echoed request (an allow) carrying a deny whose `response_code`
    /// is 1e400: the reply has a `response` object, so it is a deny, and
    /// the deny is malformed.
    pub fn echo_with_deny_code_1e400(r: &Received) -> Fault {
        let extra = br#""response":{"response_code":1e400,"headers":[],"body":"denied"}"#;
        reply_json(&object_with(&neutral(r), &[], extra))
    }
    /// The echoed request (an allow) carrying a deny with a member nested
    /// 200 deep, beyond serde_json's limit of 128 for a parsed value.
    pub fn echo_with_deep_deny(r: &Received) -> Fault {
        let extra = format!(
            r#""response":{{"response_code":"403","headers":[],"body":"denied","pad":{}}}"#,
            nested_arrays(200)
        );
        reply_json(&object_with(&neutral(r), &[], extra.as_bytes()))
    }
    pub fn invalid_utf8_body(r: &Received) -> Fault {
        let mut body: Vec<u8> = if is_response_call(r) {
            object_with(&neutral(r), &["body"], b"")
        } else {
            br#"{"response":{"response_code":"403","headers":[]}"#.to_vec()
        };
        assert_eq!(body.pop(), Some(b'}'));
        body.extend_from_slice(b",\"body\":\"caf\xE9 \xFF\xFE\"}");
        if !is_response_call(r) {
            body.push(b'}');
        }
        reply_json(&body)
    }
    /// The neutral reply with one more header whose value is not UTF-8.
    pub fn invalid_utf8_header(r: &Received) -> Fault {
        let v = neutral(r);
        let mut headers = v["headers"].to_string().into_bytes();
        assert_eq!(headers.pop(), Some(b']'));
        if headers.len() > 1 {
            headers.push(b',');
        }
        headers.extend_from_slice(b"{\"x-bad\":\"\xC3\x28\"}]");
        let mut extra = b"\"headers\":".to_vec();
        extra.extend_from_slice(&headers);
        reply_json(&object_with(&v, &["headers"], &extra))
    }
    pub fn upstream_503(_: &Received) -> Fault {
        Fault::Reply(raw_response(
            503,
            &[("Content-Type", "text/plain")],
            b"busy",
        ))
    }
    pub fn upstream_big_body(_: &Received) -> Fault {
        let body = vec![b'b'; MAX_BODY + 1];
        Fault::Reply(raw_response(200, &[("Content-Type", "text/plain")], &body))
    }
}

// ---------------------------------------------------------------------------
// The tables
// ---------------------------------------------------------------------------

/// How the faulty peer is made.
#[derive(Clone, Copy)]
enum Peer {
    /// A [`FaultServer`] playing this on the faulty call (plain TCP; with
    /// the row's `tls` the host is told to speak TLS to it).
    Plays(fn(&Received) -> Fault),
    /// A port nothing listens on.
    Refused,
    /// A well-behaved TLS server whose certificate the host cannot verify
    /// (a private CA the host's trust store does not hold).
    UntrustedTls,
}

/// What the client's body must be.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Body {
    /// No body (the filter's failure replies: `content-length: 0`).
    Empty,
    /// Exactly this many bytes.
    Len(usize),
    /// Not checked (Kong's error pages, the upstream's bodies).
    Any,
}

#[derive(Clone, Copy, Debug)]
struct Expect {
    status: u16,
    body: Body,
    /// The request reaches the upstream (an allow, not a failure).
    through: bool,
}

/// A failure reply of the filter: `status`, empty body, upstream untouched.
const fn fail(status: u16) -> Option<Expect> {
    Some(Expect {
        status,
        body: Body::Empty,
        through: false,
    })
}

/// A reply the client gets as it is (a deny, a relayed 413/429, or the
/// upstream's own answer).
const fn relayed(status: u16, body: Body) -> Option<Expect> {
    Some(Expect {
        status,
        body,
        through: false,
    })
}

/// The request goes through (the fault is not one).
const fn allowed(status: u16) -> Option<Expect> {
    Some(Expect {
        status,
        body: Body::Any,
        through: true,
    })
}

/// A fault of the policy server.
struct PolicyRow {
    name: &'static str,
    peer: Peer,
    tls: bool,
    /// Text of the filter's warn or error line about the failure ("" when
    /// there is none to look for).
    log: &'static str,
    /// The fault on `/sideband/request` (hook off and on).
    request: Option<Expect>,
    /// The fault on `/sideband/response` (hook on; `/sideband/request`
    /// allows). `None`: not applicable, or cannot be staged (both calls go
    /// to one `service_url`, so the request call meets a refused connection
    /// or a TLS failure first).
    response: Option<Expect>,
}

/// A row played by a fault server, with one expectation for both calls.
const fn policy(
    name: &'static str,
    peer: fn(&Received) -> Fault,
    log: &'static str,
    both: Option<Expect>,
) -> PolicyRow {
    policy2(name, peer, log, both, both)
}

/// A row played by a fault server, with an expectation per call.
const fn policy2(
    name: &'static str,
    peer: fn(&Received) -> Fault,
    log: &'static str,
    request: Option<Expect>,
    response: Option<Expect>,
) -> PolicyRow {
    PolicyRow {
        name,
        peer: Peer::Plays(peer),
        tls: false,
        log,
        request,
        response,
    }
}

const POLICY_ROWS: &[PolicyRow] = &[
    // Connection and transport: no `:status`, class `unreachable`.
    PolicyRow {
        name: "refused connection",
        peer: Peer::Refused,
        tls: false,
        log: ": broken connection",
        request: fail(502),
        response: None,
    },
    policy(
        "timeout before the head",
        play::stall_before_head,
        ": timeout",
        fail(502),
    ),
    policy(
        "timeout in the head",
        play::stall_mid_head,
        ": timeout",
        fail(502),
    ),
    policy(
        "timeout after the head, before the body",
        play::stall_after_head,
        ": timeout",
        fail(502),
    ),
    policy(
        "timeout mid-body",
        play::stall_mid_body,
        ": timeout",
        fail(502),
    ),
    PolicyRow {
        name: "TLS configured, plain-TCP server",
        peer: Peer::Plays(play::plain_http_to_tls),
        tls: true,
        log: ": tls handshake failure",
        request: fail(502),
        response: None,
    },
    PolicyRow {
        name: "TLS server, certificate not trusted",
        peer: Peer::UntrustedTls,
        tls: true,
        log: ": tls handshake failure",
        request: fail(502),
        response: None,
    },
    policy(
        "reset before any byte",
        play::reset_at_once,
        ": broken connection",
        fail(502),
    ),
    policy(
        "reset mid-head",
        play::reset_mid_head,
        ": reader failure",
        fail(502),
    ),
    policy(
        "reset mid-body",
        play::reset_mid_body,
        ": broken connection",
        fail(502),
    ),
    policy(
        "close mid-body (short Content-Length body)",
        play::close_mid_body,
        ": broken connection",
        fail(502),
    ),
    policy(
        "truncated chunked body",
        play::truncated_chunk,
        ": broken connection",
        fail(502),
    ),
    policy(
        "chunked body without its last chunk",
        play::chunked_without_last_chunk,
        ": broken connection",
        fail(502),
    ),
    policy(
        "head over the host's 8 KiB",
        play::oversized_head,
        ": reader failure",
        fail(502),
    ),
    // Statuses.
    policy(
        "100 Continue and nothing else",
        play::continue_only,
        "status 100). Error: empty body",
        fail(502),
    ),
    policy(
        "204 No Content",
        play::no_content,
        "status 204). Error: empty body",
        fail(502),
    ),
    policy(
        "304 Not Modified",
        play::not_modified,
        "status 304). Error: empty body",
        fail(502),
    ),
    policy(
        "401 with JSON",
        play::rejected_401,
        "denied with status code 401",
        fail(502),
    ),
    policy(
        "413 with JSON (relayed)",
        play::too_large_413,
        "denied with status code 413",
        relayed(413, Body::Len(31)),
    ),
    policy(
        "429",
        play::rate_limited_429,
        "answered 429",
        relayed(429, Body::Any),
    ),
    policy(
        "503 with JSON",
        play::server_error_503,
        "failed with status code 503",
        fail(502),
    ),
    policy(
        "500 with HTML",
        play::server_error_500_html,
        "Unable to parse JSON body",
        fail(502),
    ),
    // Size: no limit of the filter's own; the host reads what Content-Length says.
    policy2(
        "2 MiB reply (a deny / a response reply with a 2 MiB body)",
        play::big_reply,
        "",
        relayed(403, Body::Len(BIG)),
        relayed(200, Body::Len(BIG)),
    ),
    // JSON.
    policy(
        "not JSON",
        play::not_json,
        "Unable to parse JSON body",
        fail(502),
    ),
    policy(
        "empty 200 body",
        play::empty_200,
        "Error: empty body",
        fail(502),
    ),
    policy(
        "JSON array",
        play::json_array,
        "the reply is not a JSON object",
        fail(502),
    ),
    policy(
        "JSON string",
        play::json_string,
        "the reply is not a JSON object",
        fail(502),
    ),
    policy(
        "JSON number",
        play::json_number,
        "the reply is not a JSON object",
        fail(502),
    ),
    policy(
        r#"{"response": 5}"#,
        play::response_is_a_number,
        "Invalid sideband",
        fail(502),
    ),
    policy(
        "required member missing: headers",
        play::missing_headers,
        "'headers' is missing",
        fail(502),
    ),
    policy(
        "required member missing: response_code",
        play::missing_response_code,
        "'response_code' is missing",
        fail(502),
    ),
    PolicyRow {
        name: "required member missing: url (allow)",
        peer: Peer::Plays(play::allow_missing_url),
        tls: false,
        log: "'url' is missing",
        request: fail(502),
        response: None, // not a member of a response reply
    },
    PolicyRow {
        name: "duplicate member: response (deny, then false) on an echo",
        peer: Peer::Plays(play::duplicate_response),
        tls: false,
        log: "the reply has member 'response' twice",
        request: fail(502),
        response: None, // not a member of a response reply
    },
    policy(
        "duplicate member: headers (the second adds x-injected)",
        play::duplicate_headers,
        "the reply has member 'headers' twice",
        fail(502),
    ),
    PolicyRow {
        name: "duplicate member: body (\"***\", then the original)",
        peer: Peer::Plays(play::duplicate_body),
        tls: false,
        log: "the reply has member 'body' twice",
        request: None, // a request body change is another matter (hook off: 502)
        response: fail(502),
    },
    policy(
        "10,000 nested arrays",
        play::deep_nesting,
        "recursion limit exceeded",
        fail(502),
    ),
    // An unknown member is skipped without being parsed into a value, at
    // any depth: the echo is an allow, the response reply is used.
    policy(
        "a member nested 10,000 deep on an echo (ignored)",
        play::deep_member,
        "",
        allowed(200),
    ),
    PolicyRow {
        name: "echo with a deny nested 200 deep",
        peer: Peer::Plays(play::echo_with_deep_deny),
        tls: false,
        log: "'response' cannot be read",
        request: fail(502),
        response: None,
    },
    policy(
        "response_code 1e400",
        play::code_1e400,
        "Invalid sideband",
        fail(502),
    ),
    policy(
        "response_code of 400 digits",
        play::code_400_digits,
        "Invalid sideband",
        fail(502),
    ),
    PolicyRow {
        name: "echo with a deny whose response_code is 1e400",
        peer: Peer::Plays(play::echo_with_deny_code_1e400),
        tls: false,
        log: "'response' cannot be read",
        request: fail(502),
        response: None,
    },
    policy(
        "invalid UTF-8 in a body string",
        play::invalid_utf8_body,
        "invalid unicode code point",
        fail(502),
    ),
    policy(
        "invalid UTF-8 in a header value",
        play::invalid_utf8_header,
        "invalid unicode code point",
        fail(502),
    ),
];

/// A fault of the upstream (the policy server allows).
struct UpstreamRow {
    name: &'static str,
    peer: Peer,
    tls: bool,
    /// Hook off: what the client gets from Kong's own proxying (the
    /// emulator's nginx), and text of the host's error line.
    off: Option<Expect>,
    off_log: &'static str,
    /// Hook on: what the filter answers after its own upstream call, and
    /// text of its error line.
    on: Option<Expect>,
    on_log: &'static str,
    /// Hook on: `/sideband/response` is called (the upstream gave a response).
    on_response_called: bool,
}

/// A row whose fault fails the upstream call: Kong's error (hook off), the
/// filter's empty error reply (hook on), no `/sideband/response`.
const fn up_fail(
    name: &'static str,
    peer: fn(&Received) -> Fault,
    off: u16,
    off_log: &'static str,
    on: u16,
    on_log: &'static str,
) -> UpstreamRow {
    UpstreamRow {
        name,
        peer: Peer::Plays(peer),
        tls: false,
        off: relayed(off, Body::Any),
        off_log,
        on: fail(on),
        on_log,
        on_response_called: false,
    }
}

/// A row where the upstream answers: the client gets its status, with the
/// hook through `/sideband/response`.
const fn up_answers(
    name: &'static str,
    peer: fn(&Received) -> Fault,
    status: u16,
    body: Body,
) -> UpstreamRow {
    UpstreamRow {
        name,
        peer: Peer::Plays(peer),
        tls: false,
        off: relayed(status, body),
        off_log: "",
        on: relayed(status, body),
        on_log: "",
        on_response_called: true,
    }
}

const UPSTREAM_ROWS: &[UpstreamRow] = &[
    UpstreamRow {
        name: "refused connection",
        peer: Peer::Refused,
        tls: false,
        off: relayed(502, Body::Any),
        off_log: "connect() failed (Connection refused)",
        on: fail(502),
        on_log: "failed: broken connection",
        on_response_called: false,
    },
    up_fail(
        "timeout before the head",
        play::stall_before_head,
        504,
        "upstream timed out",
        504,
        "failed: timeout",
    ),
    up_fail(
        "timeout in the head",
        play::stall_mid_head,
        504,
        "upstream timed out",
        504,
        "failed: timeout",
    ),
    // Hook off, after the head (this row, reset and close mid-body, the
    // truncated chunked body): on Kong, nginx has sent the head to the
    // client by then, so the client gets 200 and a cut body; the emulator
    // reads bodies whole and answers 504 / 502 (docs/emulator.md, "Not
    // emulated").
    up_fail(
        "timeout mid-body",
        play::stall_mid_body,
        504,
        "upstream timed out",
        504,
        "failed: timeout",
    ),
    up_fail(
        "reset before any byte",
        play::reset_at_once,
        502,
        "prematurely closed",
        502,
        "failed: broken connection",
    ),
    up_fail(
        "reset mid-head",
        play::reset_mid_head,
        502,
        "invalid header",
        502,
        "failed: reader failure",
    ),
    up_fail(
        "reset mid-body",
        play::reset_mid_body,
        502,
        "prematurely closed",
        502,
        "failed: broken connection",
    ),
    up_fail(
        "close mid-body (short Content-Length body)",
        play::close_mid_body,
        502,
        "prematurely closed",
        502,
        "failed: broken connection",
    ),
    up_fail(
        "truncated chunked body",
        play::truncated_chunk,
        502,
        "prematurely closed",
        502,
        "failed: broken connection",
    ),
    up_fail(
        "head over the host's 8 KiB",
        play::oversized_head,
        502,
        "invalid header",
        502,
        "failed: reader failure",
    ),
    UpstreamRow {
        name: "TLS configured, plain-TCP server",
        peer: Peer::Plays(play::plain_http_to_tls),
        tls: true,
        off: relayed(502, Body::Any),
        off_log: "SSL_do_handshake() failed",
        on: fail(502),
        on_log: "failed: tls handshake failure",
        on_response_called: false,
    },
    UpstreamRow {
        name: "TLS server, certificate not trusted",
        peer: Peer::UntrustedTls,
        tls: true,
        // Kong does not verify a service's certificate unless the service
        // sets tls_verify; the Wasm host's own calls verify (globally).
        off: relayed(200, Body::Any),
        off_log: "",
        on: fail(502),
        on_log: "failed: tls handshake failure",
        on_response_called: false,
    },
    // nginx's proxy module has no case for a 1xx other than 101: it takes
    // it as the final status. The hook relays what the policy returns.
    up_answers(
        "100 Continue and nothing else",
        play::continue_only,
        100,
        Body::Any,
    ),
    up_answers("204 No Content", play::no_content, 204, Body::Empty),
    up_answers("304 Not Modified", play::not_modified, 304, Body::Empty),
    up_answers("503", play::upstream_503, 503, Body::Len(4)),
    UpstreamRow {
        name: "body over max_response_body_bytes",
        peer: Peer::Plays(play::upstream_big_body),
        tls: false,
        off: relayed(200, Body::Len(MAX_BODY + 1)),
        off_log: "",
        on: fail(502),
        on_log: "exceeds max_response_body_bytes",
        on_response_called: false,
    },
];

// ---------------------------------------------------------------------------
// Running one case
// ---------------------------------------------------------------------------

/// The certificate of the TLS servers: from a private CA that the host's
/// trust store does not hold (Kong's defaults: verification on, the OS
/// bundle; the emulator loads no system store at all).
fn pki() -> &'static TestPki {
    static PKI: OnceLock<TestPki> = OnceLock::new();
    PKI.get_or_init(|| TestPki::generate().unwrap())
}

fn client_request(with_body: bool) -> ClientRequest {
    if with_body {
        post("/fm", CLIENT_BODY)
    } else {
        get("/fm")
    }
}

/// The servers of one case; all stop when it is dropped.
#[derive(Default)]
struct Servers {
    fault: Option<FaultServer>,
    tls_pdp: Option<Pdp>,
    tls_upstream: Option<Upstream>,
    policy: Option<PolicyServer>,
    echo: Option<Upstream>,
}

impl Servers {
    fn logs(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(f) = &self.fault {
            lines.extend(f.log_lines());
        }
        if let Some(p) = &self.policy {
            lines.extend(p.log_lines());
        }
        lines
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Hook {
    Off,
    On,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Faulty {
    /// The policy server fails `/sideband/request`.
    PolicyRequest,
    /// The policy server fails `/sideband/response` (hook on).
    PolicyResponse,
    /// The upstream fails.
    Upstream,
}

#[derive(Clone, Copy)]
struct Case {
    row: usize,
    faulty: Faulty,
    hook: Hook,
    body: bool,
}

impl Case {
    fn name(&self) -> &'static str {
        match self.faulty {
            Faulty::Upstream => UPSTREAM_ROWS[self.row].name,
            _ => POLICY_ROWS[self.row].name,
        }
    }

    fn expect(&self) -> Option<Expect> {
        match self.faulty {
            Faulty::PolicyRequest => POLICY_ROWS[self.row].request,
            Faulty::PolicyResponse => POLICY_ROWS[self.row].response,
            Faulty::Upstream => {
                let row = &UPSTREAM_ROWS[self.row];
                match self.hook {
                    Hook::Off => row.off,
                    Hook::On => row.on,
                }
            }
        }
    }
}

fn all_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    for body in [false, true] {
        for row in 0..POLICY_ROWS.len() {
            for hook in [Hook::Off, Hook::On] {
                cases.push(Case {
                    row,
                    faulty: Faulty::PolicyRequest,
                    hook,
                    body,
                });
            }
            cases.push(Case {
                row,
                faulty: Faulty::PolicyResponse,
                hook: Hook::On,
                body,
            });
        }
        for row in 0..UPSTREAM_ROWS.len() {
            for hook in [Hook::Off, Hook::On] {
                cases.push(Case {
                    row,
                    faulty: Faulty::Upstream,
                    hook,
                    body,
                });
            }
        }
    }
    cases.retain(|c| c.expect().is_some());
    cases
}

/// A fault server playing `fault` on the faulty call and the neutral reply
/// on the other (a TLS client hello counts as the faulty call).
fn policy_fault_server(fault: fn(&Received) -> Fault, on_response: bool) -> FaultServer {
    FaultServer::start(move |r| {
        if !r.http || is_response_call(r) == on_response {
            fault(r)
        } else {
            neutral_reply(r)
        }
    })
    .unwrap()
}

fn filter_config(pdp_url: String, hook: Hook) -> Vec<u8> {
    let mut c = config(
        0,
        json!({
            "shared_secret": SECRET,
            "connection_timeout_ms": TIMEOUT_MS,
            "enable_response_hook": hook == Hook::On,
            "upstream_timeout_ms": TIMEOUT_MS,
            "max_response_body_bytes": MAX_BODY,
            "enable_debug_logging": true,
        }),
    );
    c["service_url"] = pdp_url.into();
    c.to_string().into_bytes()
}

fn url(tls: bool, port: u16) -> String {
    if tls {
        format!("https://localhost:{port}/")
    } else {
        format!("http://127.0.0.1:{port}/")
    }
}

/// What one case produced.
struct Outcome {
    resp: ClientResponse,
    /// HTTP requests the upstream server received.
    upstream_reached: usize,
    /// `/sideband/response` calls the policy server received.
    response_calls: usize,
    /// `/sideband/request` calls the policy server received, and whether each
    /// carried the secret.
    request_calls: Vec<bool>,
    /// Every log line: the emulator's, the policy server's, the fault server's.
    logs: Vec<String>,
    /// The filter's warn and error lines.
    filter_warnings: Vec<String>,
    /// The lines the host (not the filter) wrote.
    host_lines: Vec<String>,
    elapsed: Duration,
}

fn run(case: Case) -> Outcome {
    let mut servers = Servers::default();
    let secret_of = |r: &Received| r.header("CLIENT-TOKEN") == Some(SECRET.as_bytes());
    let (pdp_url, service) = match case.faulty {
        Faulty::PolicyRequest | Faulty::PolicyResponse => {
            let row = &POLICY_ROWS[case.row];
            let port = match row.peer {
                Peer::Plays(f) => {
                    let s = policy_fault_server(f, case.faulty == Faulty::PolicyResponse);
                    let p = s.port();
                    servers.fault = Some(s);
                    p
                }
                Peer::Refused => closed_port(),
                Peer::UntrustedTls => {
                    let pdp = Pdp::start_tls(Some(pki().server_config().unwrap()), allow_all);
                    let p = pdp.port();
                    servers.tls_pdp = Some(pdp);
                    p
                }
            };
            let echo = upstream();
            let service = service(echo.addr().port());
            servers.echo = Some(echo);
            (url(row.tls, port), service)
        }
        Faulty::Upstream => {
            let row = &UPSTREAM_ROWS[case.row];
            let policy =
                PolicyServer::start(Policy::allow_all(SECRET), "127.0.0.1:0", None).unwrap();
            policy.set_log_to_stderr(false);
            let pdp_url = url(false, policy.addr().port());
            servers.policy = Some(policy);
            let port = match row.peer {
                Peer::Plays(f) => {
                    let s = FaultServer::start(f).unwrap();
                    let p = s.port();
                    servers.fault = Some(s);
                    p
                }
                Peer::Refused => closed_port(),
                Peer::UntrustedTls => {
                    let up = Upstream::start("127.0.0.1:0", Some(pki().server_config().unwrap()))
                        .unwrap();
                    let p = up.addr().port();
                    servers.tls_upstream = Some(up);
                    p
                }
            };
            let mut service = service(port);
            if row.tls {
                service.protocol = "https".into();
                service.host = "localhost".into();
            }
            service.connect_timeout = TIMEOUT_MS;
            service.write_timeout = TIMEOUT_MS;
            service.read_timeout = TIMEOUT_MS;
            (pdp_url, service)
        }
    };
    let (mut emu, chain) = emulator(
        HostOptions::default(),
        service,
        route(),
        filter_config(pdp_url, case.hook),
    );
    let t = Instant::now();
    let resp = emu.send(chain, client_request(case.body));
    let elapsed = t.elapsed();

    let (upstream_reached, response_calls, request_calls) = match case.faulty {
        Faulty::PolicyRequest | Faulty::PolicyResponse => {
            let reached = servers.echo.as_ref().unwrap().requests().len();
            let (resp_calls, req_calls) = match &servers.fault {
                Some(f) => (
                    f.calls("/sideband/response").len(),
                    f.calls("/sideband/request").iter().map(secret_of).collect(),
                ),
                None => match &servers.tls_pdp {
                    Some(p) => (
                        p.calls("/sideband/response").len(),
                        p.calls("/sideband/request")
                            .iter()
                            .map(|r| r.header("CLIENT-TOKEN") == Some(SECRET.as_bytes()))
                            .collect(),
                    ),
                    None => (0, Vec::new()),
                },
            };
            (reached, resp_calls, req_calls)
        }
        Faulty::Upstream => {
            let reached = match (&servers.fault, &servers.tls_upstream) {
                (Some(f), _) => f.requests().len(),
                (None, Some(u)) => u.requests().len(),
                (None, None) => 0,
            };
            let p = servers.policy.as_ref().unwrap();
            let exchanges = p.received();
            let req_calls = exchanges
                .iter()
                .filter(|e| e.path.ends_with("/sideband/request"))
                .map(|e| {
                    e.headers.iter().any(|(n, v)| {
                        n.eq_ignore_ascii_case("CLIENT-TOKEN") && v == SECRET.as_bytes()
                    })
                })
                .collect();
            let resp_calls = exchanges
                .iter()
                .filter(|e| e.path.ends_with("/sideband/response"))
                .count();
            (reached, resp_calls, req_calls)
        }
    };
    let mut logs: Vec<String> = emu.logs().iter().map(|l| l.message.clone()).collect();
    let filter_warnings = emu
        .logs()
        .iter()
        .filter(|l| l.from_filter && l.level >= LogLevel::Warn)
        .map(|l| l.message.clone())
        .collect();
    let host_lines = emu
        .logs()
        .iter()
        .filter(|l| !l.from_filter)
        .map(|l| l.message.clone())
        .collect();
    logs.extend(servers.logs());
    drop(emu);
    drop(servers);
    Outcome {
        resp,
        upstream_reached,
        response_calls,
        request_calls,
        logs,
        filter_warnings,
        host_lines,
        elapsed,
    }
}

/// Records a problem when `got` is not `want`.
fn expect_eq(problems: &mut Vec<String>, what: &str, got: String, want: String) {
    if got != want {
        problems.push(format!("{what}: got {got}, want {want}"));
    }
}

/// The checks of one case; the problems found (empty: the case passes).
fn check(case: Case, o: &Outcome) -> Vec<String> {
    let mut problems = Vec::new();
    let e = case.expect().unwrap();
    let r = &o.resp;
    expect_eq(
        &mut problems,
        "trapped",
        r.trapped.to_string(),
        "false".into(),
    );
    expect_eq(
        &mut problems,
        "stalled",
        r.stalled.to_string(),
        "false".into(),
    );
    expect_eq(
        &mut problems,
        "host fault",
        format!("{:?}", r.host_fault),
        "None".into(),
    );
    expect_eq(
        &mut problems,
        "framing error",
        format!("{:?}", r.framing_error),
        "None".into(),
    );
    let through = e.through;
    expect_eq(
        &mut problems,
        "status",
        r.status.to_string(),
        e.status.to_string(),
    );
    match e.body {
        Body::Empty => {
            expect_eq(
                &mut problems,
                "body length",
                r.body.len().to_string(),
                "0".into(),
            );
            if r.status >= 200 && r.status != 204 && r.status != 304 {
                expect_eq(
                    &mut problems,
                    "content-length",
                    format!("{:?}", r.header("content-length")),
                    format!("{:?}", Some("0")),
                );
            }
        }
        Body::Len(n) => expect_eq(
            &mut problems,
            "body length",
            r.body.len().to_string(),
            n.to_string(),
        ),
        Body::Any => {}
    }
    let count = |n: bool| usize::from(n).to_string();
    let (log_needle, log_from_filter) = match case.faulty {
        Faulty::PolicyRequest => {
            // A failure: the upstream is never reached, by Kong or the hook.
            expect_eq(
                &mut problems,
                "upstream requests",
                o.upstream_reached.to_string(),
                count(through),
            );
            let kong = through && case.hook == Hook::Off;
            expect_eq(
                &mut problems,
                "Kong proxied",
                r.upstream_requests.to_string(),
                count(kong),
            );
            let hooked = through && case.hook == Hook::On;
            expect_eq(
                &mut problems,
                "/sideband/response calls",
                o.response_calls.to_string(),
                count(hooked),
            );
            (POLICY_ROWS[case.row].log, true)
        }
        Faulty::PolicyResponse => {
            // The hook called the upstream once; Kong did not proxy.
            expect_eq(
                &mut problems,
                "upstream requests",
                o.upstream_reached.to_string(),
                "1".into(),
            );
            expect_eq(
                &mut problems,
                "Kong proxied",
                r.upstream_requests.to_string(),
                "0".into(),
            );
            expect_eq(
                &mut problems,
                "/sideband/response calls",
                o.response_calls.to_string(),
                "1".into(),
            );
            (POLICY_ROWS[case.row].log, true)
        }
        Faulty::Upstream => {
            let row = &UPSTREAM_ROWS[case.row];
            let reachable = match row.peer {
                Peer::Refused => false,
                // A plain server never gets an HTTP request over TLS.
                Peer::Plays(_) => !row.tls,
                // Only Kong's own proxying, which does not verify.
                Peer::UntrustedTls => case.hook == Hook::Off,
            };
            expect_eq(
                &mut problems,
                "upstream requests",
                o.upstream_reached.to_string(),
                count(reachable),
            );
            let kong = case.hook == Hook::Off;
            expect_eq(
                &mut problems,
                "Kong proxied",
                r.upstream_requests.to_string(),
                count(kong),
            );
            let hooked = case.hook == Hook::On && row.on_response_called;
            expect_eq(
                &mut problems,
                "/sideband/response calls",
                o.response_calls.to_string(),
                count(hooked),
            );
            match case.hook {
                Hook::On => (row.on_log, true),
                Hook::Off => (row.off_log, false),
            }
        }
    };
    if !log_needle.is_empty() {
        let lines = if log_from_filter {
            &o.filter_warnings
        } else {
            &o.host_lines
        };
        if !lines.iter().any(|l| l.contains(log_needle)) {
            problems.push(format!(
                "no {} line with {log_needle:?}: {lines:?}",
                if log_from_filter {
                    "filter warn/error"
                } else {
                    "host"
                }
            ));
        }
    }
    // The policy server got the secret (so the scan below means something)...
    if o.request_calls.iter().any(|ok| !ok) {
        problems.push(format!(
            "a /sideband/request call without the secret: {:?}",
            o.request_calls
        ));
    }
    // ... and no log line carries it.
    for line in o.logs.iter().filter(|l| l.contains(SECRET)) {
        problems.push(format!("the secret is in a log line: {line}"));
    }
    if o.elapsed > Duration::from_secs(5) {
        problems.push(format!("took {:?}", o.elapsed));
    }
    problems
}

fn label(case: Case) -> String {
    let faulty = match case.faulty {
        Faulty::PolicyRequest => "policy /sideband/request",
        Faulty::PolicyResponse => "policy /sideband/response",
        Faulty::Upstream => "upstream",
    };
    format!(
        "{faulty} | {} | hook {} | {}",
        case.name(),
        if case.hook == Hook::On { "on" } else { "off" },
        if case.body { "POST" } else { "GET" }
    )
}

/// What the matrix keeps of a case it ran.
struct Ran {
    /// The case's place in the table.
    index: usize,
    case: Case,
    status: u16,
    elapsed: Duration,
    problems: Vec<String>,
}

#[test]
fn fault_matrix() {
    let started = Instant::now();
    let _ = wasm(); // build once before the threads start
    let _ = pki();
    // FAULT_MATRIX_ONLY=<text>: only the cases whose label contains it;
    // FAULT_MATRIX_LOGS=<text>: print the log lines of those cases.
    let only = std::env::var("FAULT_MATRIX_ONLY").ok();
    let mut cases = all_cases();
    cases.retain(|c| only.as_ref().is_none_or(|o| label(*c).contains(o.as_str())));
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Ran>> = Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..THREADS {
            scope.spawn(|| loop {
                let index = next.fetch_add(1, Ordering::SeqCst);
                let Some(&case) = cases.get(index) else {
                    return;
                };
                let outcome = run(case);
                if let Ok(which) = std::env::var("FAULT_MATRIX_LOGS") {
                    if label(case).contains(which.as_str()) {
                        println!("--- {}\n{}", label(case), outcome.logs.join("\n"));
                    }
                }
                let problems = check(case, &outcome);
                results.lock().unwrap().push(Ran {
                    index,
                    case,
                    status: outcome.resp.status,
                    elapsed: outcome.elapsed,
                    problems,
                });
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| r.index);
    assert_eq!(results.len(), cases.len(), "every case ran");

    let mut table = String::new();
    let mut failures = String::new();
    for Ran {
        index: _,
        case,
        status,
        elapsed,
        problems,
    } in &results
    {
        let case = *case;
        writeln!(
            table,
            "{} -> {status} [{} ms]",
            label(case),
            elapsed.as_millis()
        )
        .unwrap();
        for p in problems {
            writeln!(failures, "{}: {p}", label(case)).unwrap();
        }
    }
    println!("{table}");
    println!("{} cases in {:?}", results.len(), started.elapsed());
    assert!(failures.is_empty(), "fault matrix:\n{failures}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the matrix took {:?}",
        started.elapsed()
    );
}
