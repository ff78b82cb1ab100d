//! Every path of the exchange against the mock host: what the host is asked
//! to do (dispatches, local replies, header and property changes, resumes)
//! and the log lines written.

use super::*;
use crate::config;
use crate::host::mock::{capture_logs, logs, Effect, MockHost};
use serde_json::{json, Value};
use std::time::{Duration, SystemTime};

const SECRET: &str = "s3cr3t-value";

fn exchange_with(extra: &str) -> (Exchange, Rc<Shared>) {
    let sep = if extra.is_empty() { "" } else { "," };
    let text = format!(
        r#"{{"service_url":"https://pdp:8443/base","shared_secret":"{SECRET}","secret_header_name":"CLIENT-TOKEN"{sep}{extra}}}"#
    );
    let config = config::parse(text.as_bytes()).unwrap();
    let shared = Rc::new(Shared::new(Some(&config), Metrics::default()));
    (Exchange::new(Some(Rc::new(config)), shared.clone()), shared)
}

/// Response hook off (it is on by default, as in the Lua plugin).
fn exchange() -> Exchange {
    exchange_with(HOOK_OFF).0
}

const HOOK_OFF: &str = r#""enable_response_hook":false"#;

fn get() -> MockHost {
    MockHost::request(
        "GET",
        "/things?a=1",
        &[("host", "api.example"), ("accept", "*/*")],
    )
}

/// The payload the filter posted in its last dispatch, as JSON.
fn posted(h: &MockHost) -> Value {
    serde_json::from_slice(&h.dispatches().last().unwrap().body).unwrap()
}

/// Answers the last dispatch with `status`, `headers` and `body`.
fn answer(
    x: &mut Exchange,
    h: &mut MockHost,
    status: Option<u16>,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    h.call_reply(status, headers, body);
    let token = h.last_token();
    x.on_call_response(h, token, body.len());
}

/// Answers `/sideband/request` with the payload changed by `change`.
fn allow_with(x: &mut Exchange, h: &mut MockHost, change: impl FnOnce(&mut Value)) {
    let mut reply = posted(h);
    change(&mut reply);
    answer(x, h, Some(200), &[], reply.to_string().as_bytes());
}

fn sent_status(h: &MockHost) -> Option<u16> {
    h.sent().map(|s| s.status)
}

fn no_secret_logged() {
    assert!(
        logs().iter().all(|(_, l)| !l.contains(SECRET)),
        "{:?}",
        logs()
    );
}

#[test]
fn allow_without_changes_resumes_and_only_accept_encoding_goes() {
    capture_logs();
    let (mut x, mut h) = (exchange(), get());
    assert_eq!(x.on_request_headers(&mut h), Action::Pause);
    let calls = h.dispatches();
    assert_eq!(calls.len(), 1);
    let call = calls[0];
    assert_eq!(call.address, "pdp:8443");
    assert_eq!(call.header(":path"), Some("/base/sideband/request"));
    assert_eq!(call.header(":method"), Some("POST"));
    assert_eq!(call.header("CLIENT-TOKEN"), Some(SECRET));
    assert_eq!(call.timeout, Duration::from_millis(10_000));
    let p = posted(&h);
    assert_eq!(p["method"], "GET");
    assert_eq!(p["url"], "http://api.example:80/things?a=1");
    assert_eq!(p["source_ip"], "10.0.0.7");
    allow_with(&mut x, &mut h, |_| {});
    assert!(h.resumed());
    assert_eq!(h.sent(), None);
    assert_eq!(h.changes(Map::RequestHeaders), Vec::<&Effect>::new());
    // The one change an echo makes: Accept-Encoding (the filter reads
    // bodies as sent), set in place because a removal keeps its slot.
    let (mut x, mut h) = (
        exchange(),
        MockHost::request("GET", "/", &[("accept-encoding", "gzip")]),
    );
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |_| {});
    assert_eq!(
        h.changes(Map::RequestHeaders),
        vec![&Effect::SetHeader(
            Map::RequestHeaders,
            "accept-encoding".into(),
            Some("identity".into())
        )]
    );
    no_secret_logged();
}

#[test]
fn allow_applies_header_method_path_and_host_changes() {
    let (mut x, mut h) = (exchange(), get());
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |r| {
        r["method"] = json!("POST");
        r["url"] = json!("http://other.example:8080/v2/things?b=2");
        r["headers"] =
            json!([{"host": "api.example"}, {"accept": "text/plain"}, {"x-user": "alice"}]);
    });
    assert!(h.resumed());
    let changes = h.changes(Map::RequestHeaders);
    assert!(changes.contains(&&Effect::SetHeader(
        Map::RequestHeaders,
        "accept".into(),
        Some("text/plain".into())
    )));
    assert!(changes.contains(&&Effect::AddHeader(
        Map::RequestHeaders,
        "x-user".into(),
        "alice".into()
    )));
    assert!(changes.contains(&&Effect::SetHeader(
        Map::RequestHeaders,
        ":method".into(),
        Some("POST".into())
    )));
    assert!(changes.contains(&&Effect::SetHeader(
        Map::RequestHeaders,
        ":path".into(),
        Some("/v2/things?b=2".into())
    )));
    assert!(changes.contains(&&Effect::SetHeader(
        Map::RequestHeaders,
        "host".into(),
        Some("other.example:8080".into())
    )));
}

#[test]
fn allow_inside_kong_rewrites_upstream_uri_and_host_properties() {
    let (mut x, mut h) = (exchange(), get());
    h.prop("ngx.upstream_uri", "/svc/things?a=1");
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |r| {
        r["url"] = json!("http://other:81/things?z=9")
    });
    assert!(h.effects.contains(&Effect::SetProperty(
        "ngx.upstream_uri".into(),
        b"/svc/things?z=9".to_vec()
    )));
    assert!(h.effects.contains(&Effect::SetProperty(
        "ngx.upstream_host".into(),
        b"other:81".to_vec()
    )));
    assert!(h.resumed());
    // A host refusing the property: 500, not proxied.
    let (mut x, mut h) = (exchange(), get());
    h.prop("ngx.upstream_uri", "/svc/things?a=1");
    h.read_only.push("ngx.upstream_uri".into());
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |r| {
        r["url"] = json!("http://api.example:80/elsewhere")
    });
    assert_eq!(sent_status(&h), Some(500));
    assert!(!h.resumed());
}

#[test]
fn deny_is_sent_as_the_policy_wrote_it() {
    let (mut x, mut h) = (exchange(), get());
    x.on_request_headers(&mut h);
    let reply =
        json!({"response": {"response_code": "403", "headers": [{"x-why": "no"}], "body": "nope"}});
    answer(&mut x, &mut h, Some(200), &[], reply.to_string().as_bytes());
    let sent = h.sent().unwrap();
    assert_eq!(sent.status, 403);
    assert_eq!(sent.headers, vec![("x-why".to_string(), "no".to_string())]);
    // "nope" has no final newline: sent whole, the host's appended byte cut.
    assert_eq!(sent.body.as_deref(), Some(&b"nope"[..]));
    assert!(!h.resumed());
    assert_eq!(x.on_response_headers(&mut h), Action::Continue);
    x.on_response_body(&mut h, 5);
    assert_eq!(h.effects.last(), Some(&Effect::CutResponseBody(4, 1)));
}

#[test]
fn a_deny_body_ending_in_newline_needs_no_cut() {
    let (mut x, mut h) = (exchange(), get());
    x.on_request_headers(&mut h);
    let reply = json!({"response": {"response_code": 401, "headers": [], "body": "no\n"}});
    answer(&mut x, &mut h, Some(200), &[], reply.to_string().as_bytes());
    assert_eq!(h.sent().unwrap().body.as_deref(), Some(&b"no"[..]));
    x.on_response_body(&mut h, 3);
    assert!(!h
        .effects
        .iter()
        .any(|e| matches!(e, Effect::CutResponseBody(..))));
}

/// Each failure of `/sideband/request`: the client's status, one log line,
/// nothing proxied, the secret never logged.
#[test]
fn every_sideband_failure_answers_the_client_and_never_proxies() {
    type Case<'a> = (&'a str, Option<u16>, &'a [u8], u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "timeout",
            None,
            b"",
            502,
            "Failed to send sideband request to pdp:8443: timeout",
        ),
        (
            "not json",
            Some(200),
            b"<html>",
            502,
            "Unable to parse JSON body",
        ),
        ("empty", Some(200), b"", 502, "empty body"),
        (
            "401",
            Some(401),
            br#"{"message":"bad secret","id":"7"}"#,
            502,
            "denied with status code 401: bad secret (7)",
        ),
        (
            "413",
            Some(413),
            br#"{"message":"big"}"#,
            413,
            "denied with status code 413: big",
        ),
        (
            "500",
            Some(503),
            br#"{"message":"down"}"#,
            502,
            "failed with status code 503: down",
        ),
        (
            "array",
            Some(200),
            b"[1]",
            502,
            "Invalid sideband request reply",
        ),
        (
            "no headers",
            Some(200),
            br#"{"method":"GET","url":"http://api.example:80/things?a=1"}"#,
            502,
            "'headers' is missing",
        ),
        (
            "bad deny",
            Some(200),
            br#"{"response":{"response_code":"abc","headers":[]}}"#,
            502,
            "'response_code'",
        ),
    ];
    for (name, status, body, want, line) in cases {
        capture_logs();
        let (mut x, mut h) = (exchange(), get());
        x.on_request_headers(&mut h);
        answer(&mut x, &mut h, status, &[], body);
        assert_eq!(sent_status(&h), Some(want), "{name}");
        assert!(!h.resumed(), "{name}");
        assert_eq!(h.dispatches().len(), 1, "{name}");
        let lines = logs();
        assert!(
            lines.iter().any(|(_, l)| l.contains(line)),
            "{name}: {lines:?}"
        );
        no_secret_logged();
    }
}

#[test]
fn a_refused_dispatch_is_unreachable() {
    capture_logs();
    let (mut x, mut h) = (exchange(), get());
    h.refuse_dispatch = Some("BadArgument".into());
    assert_eq!(x.on_request_headers(&mut h), Action::Pause);
    assert_eq!(sent_status(&h), Some(502));
    assert!(logs().iter().any(|(l, m)| *l == log::Level::Error
        && m == "Failed to send sideband request to pdp:8443: the host refused the call (BadArgument)"));
}

#[test]
fn a_429_backs_off_the_configuration_and_later_requests_make_no_call() {
    let (mut x, backoff) = exchange_with(HOOK_OFF);
    let mut h = get();
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    h.now = Some(t0);
    x.on_request_headers(&mut h);
    answer(&mut x, &mut h, Some(429), &[("retry-after", "30")], b"");
    let sent = h.sent().unwrap();
    assert_eq!(sent.status, 429);
    assert!(sent
        .headers
        .contains(&("retry-after".to_string(), "30".to_string())));
    // The next request of the same configuration, 10 s later: no call, 20 s left.
    let mut next = Exchange::new(x.config.clone(), backoff.clone());
    let mut h2 = get();
    h2.now = Some(t0 + Duration::from_secs(10));
    next.on_request_headers(&mut h2);
    assert!(h2.dispatches().is_empty());
    let sent = h2.sent().unwrap();
    assert_eq!(sent.status, 429);
    assert!(sent
        .headers
        .contains(&("retry-after".to_string(), "20".to_string())));
    // After the back-off: calls again.
    let mut later = Exchange::new(x.config.clone(), backoff);
    let mut h3 = get();
    h3.now = Some(t0 + Duration::from_secs(31));
    later.on_request_headers(&mut h3);
    assert_eq!(h3.dispatches().len(), 1);
}

#[test]
fn requests_the_host_cannot_describe_are_refused_before_any_call() {
    // A full header map may be truncated: 431.
    let (mut x, mut h) = (exchange(), get());
    h.declared_request_pairs = Some(100);
    x.on_request_headers(&mut h);
    assert_eq!(sent_status(&h), Some(431));
    assert!(h.dispatches().is_empty());
    // An unreadable client certificate: 400.
    let (mut x, mut h) = (exchange(), get());
    h.prop(
        "ngx.ssl_client_raw_cert",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    );
    x.on_request_headers(&mut h);
    assert_eq!(sent_status(&h), Some(400));
    assert!(h.dispatches().is_empty());
    // No valid configuration: 500.
    let mut x = Exchange::new(None, Rc::default());
    let mut h = get();
    x.on_request_headers(&mut h);
    assert_eq!(sent_status(&h), Some(500));
}

#[test]
fn a_request_body_is_read_in_the_body_step_and_sent() {
    let (mut x, mut h) = (
        exchange(),
        MockHost::request("POST", "/p", &[("content-length", "5")]),
    );
    assert_eq!(x.on_request_headers(&mut h), Action::Continue);
    assert!(h.dispatches().is_empty());
    h.request_body = Some(b"hello".to_vec());
    assert_eq!(x.on_request_body(&mut h, 3, false), Action::Pause);
    assert_eq!(x.on_request_body(&mut h, 5, true), Action::Pause);
    assert_eq!(posted(&h)["body"], "hello");
    // An echo of the body keeps it; a changed body cannot be applied with the hook off.
    allow_with(&mut x, &mut h, |r| r["body"] = json!("changed"));
    assert_eq!(sent_status(&h), Some(502));
    assert!(!h.resumed());
}

fn chunked_post() -> MockHost {
    MockHost::request(
        "POST",
        "/p",
        &[("transfer-encoding", "chunked"), ("x-client", "1")],
    )
}

#[test]
fn a_chunked_request_is_first_decided_without_its_body_then_with_it() {
    let (mut x, mut h) = (exchange(), chunked_post());
    // The host would proxy at once if the body were empty: ask first.
    assert_eq!(x.on_request_headers(&mut h), Action::Pause);
    assert_eq!(posted(&h)["body"], "");
    allow_with(&mut x, &mut h, |r| {
        r["headers"] = json!([{"x-client": "1"}, {"x-gate": "yes"}])
    });
    assert!(h.resumed());
    assert!(h.changes(Map::RequestHeaders).contains(&&Effect::AddHeader(
        Map::RequestHeaders,
        "x-gate".into(),
        "yes".into()
    )));
    // The body comes: decided again, with it.
    h.request_body = Some(b"data".to_vec());
    assert_eq!(x.on_request_body(&mut h, 4, true), Action::Pause);
    assert_eq!(h.dispatches().len(), 2);
    assert_eq!(posted(&h)["body"], "data");
    answer(
        &mut x,
        &mut h,
        Some(200),
        &[],
        br#"{"response":{"response_code":403,"headers":[],"body":"no"}}"#,
    );
    assert_eq!(sent_status(&h), Some(403));
}

#[test]
fn a_chunked_request_whose_empty_form_is_denied_is_denied_before_the_host_proxies_it() {
    let (mut x, mut h) = (exchange(), chunked_post());
    assert_eq!(x.on_request_headers(&mut h), Action::Pause);
    answer(
        &mut x,
        &mut h,
        Some(200),
        &[],
        br#"{"response":{"response_code":401,"headers":[]}}"#,
    );
    assert_eq!(sent_status(&h), Some(401));
    assert!(!h.resumed());
    // A failure of the gate call is denied like any other.
    let (mut x, mut h) = (exchange(), chunked_post());
    x.on_request_headers(&mut h);
    answer(&mut x, &mut h, None, &[], b"");
    assert_eq!(sent_status(&h), Some(502));
    assert!(!h.resumed());
}

#[test]
fn a_gate_call_the_host_refuses_follows_the_failure_policy_from_the_step() {
    // Let through: the headers step itself continues (no resume inside a step).
    let (mut x, _) = exchange_with(&format!(r#"{HOOK_OFF},"on_unreachable":"allow""#));
    let mut h = MockHost::request("GET", "/p", &[("transfer-encoding", "chunked")]);
    h.refuse_dispatch = Some("BadArgument".into());
    assert_eq!(x.on_request_headers(&mut h), Action::Continue);
    assert!(!h.resumed());
    assert!(h.changes(Map::RequestHeaders).contains(&&Effect::AddHeader(
        Map::RequestHeaders,
        "x-ping-auth-fail-open".into(),
        "unreachable".into()
    )));
    // Denied by default.
    let (mut x, mut h) = (exchange(), chunked_post());
    h.refuse_dispatch = Some("BadArgument".into());
    assert_eq!(x.on_request_headers(&mut h), Action::Pause);
    assert_eq!(sent_status(&h), Some(502));
}

#[test]
fn an_empty_chunked_request_goes_through_as_the_gate_allowed_it() {
    // Hook off: the host proxies it (no body step comes) and the response passes.
    let (mut x, mut h) = (exchange(), chunked_post());
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |_| {});
    h.maps.insert(
        Map::ResponseHeaders,
        vec![(":status".into(), b"201".to_vec())],
    );
    assert_eq!(x.on_response_headers(&mut h), Action::Continue);
    assert_eq!(h.sent(), None);
    // Hook on: the policy cannot see a response the host fetched: 502.
    capture_logs();
    let (mut x, mut h) = (hooked(), chunked_post());
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |_| {});
    assert!(h.resumed());
    assert_eq!(h.dispatches().len(), 1, "no upstream call before the body");
    h.maps.insert(
        Map::ResponseHeaders,
        vec![(":status".into(), b"201".to_vec())],
    );
    x.on_response_headers(&mut h);
    assert_eq!(sent_status(&h), Some(502));
    assert!(logs()
        .iter()
        .any(|(_, l)| l.starts_with("the response hook cannot run for this request")));
}

#[test]
fn the_hook_never_asks_the_host_for_a_call_it_traps_on() {
    // The host traps on a dispatch without `:method` (found by fuzzing the
    // .wasm): a request without a method is refused instead.
    let (mut x, mut h) = (hooked(), MockHost::request("", "/x", &[]));
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |_| {});
    assert_eq!(sent_status(&h), Some(500));
    assert_eq!(h.dispatches().len(), 1, "no upstream call");
}

#[test]
fn a_body_after_an_allow_without_one_is_refused() {
    let (mut x, mut h) = (exchange(), get());
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |_| {});
    assert_eq!(x.on_request_body(&mut h, 10, true), Action::Pause);
    assert_eq!(sent_status(&h), Some(500));
}

#[test]
fn an_upstream_response_before_a_decision_becomes_a_502_on_a_closed_connection() {
    capture_logs();
    let (mut x, mut h) = (
        exchange(),
        MockHost::request("POST", "/p", &[("content-length", "5")]),
    );
    x.on_request_headers(&mut h);
    h.maps.insert(
        Map::ResponseHeaders,
        vec![
            (":status".into(), b"200".to_vec()),
            ("x-up".into(), b"1".to_vec()),
            ("connection".into(), b"keep-alive".to_vec()),
        ],
    );
    assert_eq!(x.on_response_headers(&mut h), Action::Continue);
    assert_eq!(sent_status(&h), Some(502));
    let changes = h.changes(Map::ResponseHeaders);
    assert!(changes.contains(&&Effect::SetHeader(
        Map::ResponseHeaders,
        "x-up".into(),
        None
    )));
    assert!(!changes.contains(&&Effect::SetHeader(
        Map::ResponseHeaders,
        "connection".into(),
        None
    )));
    assert!(changes.contains(&&Effect::SetHeader(
        Map::ResponseHeaders,
        "connection".into(),
        Some("close".into())
    )));
    x.on_response_body(&mut h, 100);
    assert_eq!(h.effects.last(), Some(&Effect::CutResponseBody(0, 100)));
    assert!(logs()
        .iter()
        .any(|(_, l)| l.contains("before a policy decision")));
}

#[test]
fn a_reply_for_a_call_no_longer_awaited_is_ignored() {
    let (mut x, mut h) = (exchange(), get());
    x.on_request_headers(&mut h);
    let token = h.last_token();
    h.call_reply(Some(200), &[], b"{}");
    x.on_call_response(&mut h, token + 7, 2);
    assert_eq!(h.sent(), None);
    assert!(!h.resumed());
}

fn hooked() -> Exchange {
    exchange_with(r#""enable_response_hook":true,"upstream_url":"http://backend:9000""#).0
}

#[test]
fn the_response_hook_calls_the_upstream_then_the_policy_then_answers() {
    capture_logs();
    let (mut x, mut h) = (hooked(), get());
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |r| {
        r["headers"] = json!([{"host": "api.example"}, {"accept": "*/*"}, {"x-user": "alice"}]);
        r["state"] = json!({"s": 1});
    });
    assert!(!h.resumed());
    let up = h.dispatches()[1].clone();
    assert_eq!(up.address, "backend:9000");
    assert_eq!(up.header(":path"), Some("/things?a=1"));
    assert_eq!(up.header(":authority"), Some("api.example"));
    assert_eq!(up.header("x-user"), Some("alice"));
    assert_eq!(up.header("x-forwarded-for"), Some("10.0.0.7"));
    assert_eq!(up.header("accept-encoding"), None);
    answer(
        &mut x,
        &mut h,
        Some(201),
        &[("content-type", "text/plain"), ("date", "d")],
        b"made",
    );
    let call = h.dispatches()[2].clone();
    assert_eq!(call.header(":path"), Some("/base/sideband/response"));
    let p: Value = serde_json::from_slice(&call.body).unwrap();
    assert_eq!(p["response_code"], "201");
    assert_eq!(p["body"], "made");
    assert_eq!(p["state"], json!({"s": 1}));
    let reply = json!({"response_code": 200, "headers": [{"content-type": "text/plain"}], "body": "policy says"});
    answer(&mut x, &mut h, Some(200), &[], reply.to_string().as_bytes());
    let sent = h.sent().unwrap();
    assert_eq!(sent.status, 200);
    assert!(sent
        .headers
        .contains(&("date".to_string(), "d".to_string())));
    assert_eq!(sent.body.as_deref(), Some(&b"policy says"[..]));
    no_secret_logged();
}

#[test]
fn response_hook_failures() {
    // Upstream timed out: 504; refused otherwise: 502; too large: 502.
    for (status, dispatch_status, size, want) in [
        (None, "timeout", 0, 504),
        (None, "broken connection", 0, 502),
        (Some(200), "ok", 2 * 1024 * 1024, 502),
    ] {
        let (mut x, mut h) = (hooked(), get());
        x.on_request_headers(&mut h);
        allow_with(&mut x, &mut h, |_| {});
        h.call_reply(status, &[(":dispatch_status", dispatch_status)], b"");
        if status.is_none() {
            // Only the given `:dispatch_status`.
            h.maps.get_mut(&Map::CallResponseHeaders).unwrap().remove(0);
        }
        let token = h.last_token();
        x.on_call_response(&mut h, token, size);
        assert_eq!(sent_status(&h), Some(want), "{dispatch_status} {size}");
        assert_eq!(h.dispatches().len(), 2);
    }
    // No upstream known: 500.
    let (mut x, mut h) = (exchange_with(r#""enable_response_hook":true"#).0, get());
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |_| {});
    assert_eq!(sent_status(&h), Some(500));
    // `/sideband/response` failing: its failure's status.
    let (mut x, mut h) = (hooked(), get());
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |_| {});
    answer(&mut x, &mut h, Some(200), &[], b"ok");
    answer(&mut x, &mut h, Some(500), &[], br#"{"message":"x"}"#);
    assert_eq!(sent_status(&h), Some(502));
}

#[test]
fn a_body_too_large_for_the_host_cannot_be_forwarded_by_the_hook() {
    let (mut x, mut h) = (
        hooked(),
        MockHost::request("POST", "/p", &[("content-length", "900000")]),
    );
    x.on_request_headers(&mut h);
    x.on_request_body(&mut h, 900_000, true);
    assert!(posted(&h).get("body").is_none());
    allow_with(&mut x, &mut h, |_| {});
    assert_eq!(sent_status(&h), Some(413));
}

#[test]
fn debug_logging_dumps_calls_without_the_secret() {
    capture_logs();
    let mut x = exchange_with(r#""enable_debug_logging":true,"enable_response_hook":false"#).0;
    let mut h = get();
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |_| {});
    let lines = logs();
    assert!(lines
        .iter()
        .any(|(l, m)| *l == log::Level::Debug && m.starts_with("Sending sideband request")));
    assert!(lines
        .iter()
        .any(|(_, m)| m.starts_with("Received sideband response")));
    no_secret_logged();
}

fn fail_open(extra: &str) -> Exchange {
    exchange_with(&format!(r#"{HOOK_OFF},{extra}"#)).0
}

/// Every class × allow, hook off: the request is proxied unchanged with the
/// marker; other methods are denied; the marker never reaches the policy.
#[test]
fn each_failure_class_can_fail_open_for_the_listed_methods() {
    type Case<'a> = (&'a str, Option<u16>, &'a [u8], &'a str);
    let cases: Vec<Case> = vec![
        ("on_unreachable", None, b"", "unreachable"),
        (
            "on_server_error",
            Some(503),
            br#"{"message":"down"}"#,
            "server_error",
        ),
        (
            "on_client_error",
            Some(401),
            br#"{"message":"secret"}"#,
            "client_error",
        ),
        (
            "on_malformed_reply",
            Some(200),
            b"<html>",
            "malformed_reply",
        ),
        (
            "on_malformed_reply",
            Some(200),
            br#"{"method":"GET"}"#,
            "malformed_reply",
        ),
        ("on_rate_limited", Some(429), b"", "rate_limited"),
    ];
    for (field, status, body, class) in cases {
        capture_logs();
        let mut x = fail_open(&format!(r#""{field}":"allow""#));
        let mut h = MockHost::request("GET", "/x", &[("x-ping-auth-fail-open", "forged")]);
        x.on_request_headers(&mut h);
        assert!(
            posted(&h)["headers"]
                .to_string()
                .find("fail-open")
                .is_none(),
            "{class}"
        );
        answer(&mut x, &mut h, status, &[], body);
        assert_eq!(h.sent(), None, "{class}");
        assert!(h.resumed(), "{class}");
        assert!(h.effects.contains(&Effect::SetHeader(
            Map::RequestHeaders,
            "x-ping-auth-fail-open".into(),
            Some(class.into())
        )));
        // Nothing of the reply was applied.
        assert_eq!(h.changes(Map::RequestHeaders).len(), 1, "{class}");
        let line = format!("fail-open: class={class} method=GET");
        assert!(
            logs()
                .iter()
                .any(|(l, m)| *l == log::Level::Warn && m.starts_with(&line)),
            "{class}"
        );
        no_secret_logged();
        // POST is not a listed method: denied as usual.
        let mut x = fail_open(&format!(r#""{field}":"allow""#));
        let mut h = MockHost::request("POST", "/x", &[]);
        x.on_request_headers(&mut h);
        answer(&mut x, &mut h, status, &[], body);
        assert!(matches!(sent_status(&h), Some(429 | 502)), "{class}");
        assert!(!h.resumed());
    }
}

#[test]
fn deny_can_carry_a_configured_status_and_methods_are_configurable() {
    let mut x = fail_open(r#""on_server_error":"deny:503""#);
    let mut h = get();
    x.on_request_headers(&mut h);
    answer(&mut x, &mut h, Some(500), &[], b"{}");
    assert_eq!(sent_status(&h), Some(503));
    let mut x = fail_open(r#""on_unreachable":"allow","fail_open_methods":"POST, PUT""#);
    let mut h = MockHost::request("POST", "/x", &[]);
    x.on_request_headers(&mut h);
    answer(&mut x, &mut h, None, &[], b"");
    assert!(h.resumed());
    let mut h = get();
    let mut x = fail_open(r#""on_unreachable":"allow","fail_open_methods":"POST, PUT""#);
    x.on_request_headers(&mut h);
    answer(&mut x, &mut h, None, &[], b"");
    assert_eq!(sent_status(&h), Some(502));
}

#[test]
fn a_refused_dispatch_or_running_backoff_fails_open_from_the_request_step() {
    let mut x = fail_open(r#""on_unreachable":"allow""#);
    let mut h = get();
    h.refuse_dispatch = Some("InternalFailure".into());
    // Inside the request step the host continues by the returned action.
    assert_eq!(x.on_request_headers(&mut h), Action::Continue);
    assert!(!h.resumed());
    assert_eq!(h.sent(), None);
}

#[test]
fn fail_open_with_the_response_hook_marks_the_upstream_call() {
    let mut x =
        exchange_with(r#""upstream_url":"http://backend:9000","on_server_error":"allow""#).0;
    let mut h = MockHost::request("GET", "/x", &[("x-ping-auth-fail-open", "forged")]);
    x.on_request_headers(&mut h);
    answer(&mut x, &mut h, Some(500), &[], b"{}");
    let up = h.dispatches()[1].clone();
    assert_eq!(up.address, "backend:9000");
    let markers: Vec<_> = up
        .headers
        .iter()
        .filter(|(n, _)| n == "x-ping-auth-fail-open")
        .collect();
    assert_eq!(
        markers,
        vec![&(
            "x-ping-auth-fail-open".to_string(),
            "server_error".to_string()
        )]
    );
    // The response call fails too: the upstream's response, unchanged.
    answer(
        &mut x,
        &mut h,
        Some(201),
        &[("x-up", "1"), ("connection", "close")],
        b"made",
    );
    answer(&mut x, &mut h, Some(503), &[], b"{}");
    let sent = h.sent().unwrap();
    assert_eq!(sent.status, 201);
    assert_eq!(sent.headers, vec![("x-up".to_string(), "1".to_string())]);
    assert_eq!(sent.body.as_deref(), Some(&b"made"[..]));
}

fn shadow(extra: &str) -> Exchange {
    let sep = if extra.is_empty() { "" } else { "," };
    exchange_with(&format!(r#""mode":"shadow"{sep}{extra}"#)).0
}

/// Shadow mode, hook off: whatever the reply, the request is proxied as
/// sent (no header change at all), and one `shadow:` line says what would
/// have happened.
#[test]
fn shadow_mode_changes_nothing_whatever_the_reply() {
    let deny = json!({"response": {"response_code": 403, "headers": [], "body": "no"}}).to_string();
    type Case<'a> = (Option<u16>, Vec<u8>, &'a str);
    let cases: Vec<Case> = vec![
        (Some(200), deny.into_bytes(), "decision=deny status=403"),
        (
            Some(500),
            b"{}".to_vec(),
            "decision=fail status=502 directives=- class=server_error",
        ),
        (
            Some(429),
            b"".to_vec(),
            "decision=fail status=429 directives=- class=rate_limited",
        ),
        (None, b"".to_vec(), "class=unreachable"),
        (Some(200), b"[]".to_vec(), "class=malformed_reply"),
    ];
    for (status, body, line) in cases {
        capture_logs();
        let mut x = shadow(HOOK_OFF);
        let mut h = MockHost::request("GET", "/x", &[("accept-encoding", "gzip")]);
        x.on_request_headers(&mut h);
        answer(&mut x, &mut h, status, &[], &body);
        assert!(h.resumed(), "{line}");
        assert_eq!(h.sent(), None, "{line}");
        assert!(h.changes(Map::RequestHeaders).is_empty(), "{line}");
        assert!(
            logs()
                .iter()
                .any(|(_, m)| m.starts_with("shadow: decision=") && m.contains(line)),
            "{line}: {:?}",
            logs()
        );
    }
    // An allow with directives: none applied.
    capture_logs();
    let mut x = shadow(HOOK_OFF);
    let mut h = get();
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |r| {
        r["method"] = json!("POST");
        r["headers"] = json!([{"x-user": "alice"}]);
    });
    assert!(h.resumed());
    assert!(h.changes(Map::RequestHeaders).is_empty());
    assert!(logs()
        .iter()
        .any(|(_, m)| m.starts_with("shadow: decision=allow status=- directives=headers,method")));
}

#[test]
fn shadow_mode_lets_requests_the_filter_would_refuse_through() {
    let mut x = shadow(HOOK_OFF);
    let mut h = get();
    h.declared_request_pairs = Some(100);
    assert_eq!(x.on_request_headers(&mut h), Action::Continue);
    assert_eq!(h.sent(), None);
    // The host proxying before a decision: the response passes.
    let mut x = shadow(HOOK_OFF);
    let mut h = MockHost::request("POST", "/p", &[("transfer-encoding", "chunked")]);
    x.on_request_headers(&mut h);
    assert_eq!(x.on_response_headers(&mut h), Action::Continue);
    assert_eq!(h.sent(), None);
    assert!(h.changes(Map::ResponseHeaders).is_empty());
}

#[test]
fn shadow_mode_with_the_hook_posts_the_real_response_and_discards_the_reply() {
    capture_logs();
    let mut x = shadow(r#""upstream_url":"http://backend:9000""#);
    let mut h = MockHost::request("GET", "/x", &[("accept-encoding", "gzip")]);
    x.on_request_headers(&mut h);
    allow_with(&mut x, &mut h, |r| {
        r["headers"] = json!([{"x-user": "alice"}])
    });
    let up = h.dispatches()[1].clone();
    assert_eq!(up.header("x-user"), None);
    assert_eq!(up.header("accept-encoding"), Some("gzip"));
    answer(&mut x, &mut h, Some(200), &[("x-up", "1")], b"real");
    let p: Value = serde_json::from_slice(&h.dispatches()[2].body).unwrap();
    assert_eq!(p["body"], "real");
    let rewrite = json!({"response_code": 403, "headers": [], "body": "policy"}).to_string();
    answer(&mut x, &mut h, Some(200), &[], rewrite.as_bytes());
    let sent = h.sent().unwrap();
    assert_eq!(
        (sent.status, sent.body.as_deref()),
        (200, Some(&b"real"[..]))
    );
    assert!(logs()
        .iter()
        .any(|(_, m)| m.starts_with("shadow: decision=allow")
            && m.contains("response_decision=replace response_status=403")));
}

// ---- The decision cache and the metrics -------------------------------------

fn cache_spec() -> crate::config::CacheConfig {
    crate::config::CacheConfig {
        ttl_secs: 60,
        max_entries: 100,
        stale_if_error_secs: 30,
        cache_denies: false,
        key_method: true,
        key_path: true,
        key_query: true,
        key_headers: vec!["authorization".into()],
        key_client_ip: false,
        key_body: false,
    }
}

/// A worker's shared state with the cache on (`spec`), hook off.
fn cached_worker(spec: crate::config::CacheConfig, extra: &str) -> (Rc<Config>, Rc<Shared>) {
    let sep = if extra.is_empty() { "" } else { "," };
    let text = format!(
        r#"{{"service_url":"https://pdp:8443/base","shared_secret":"{SECRET}","secret_header_name":"CLIENT-TOKEN",{HOOK_OFF}{sep}{extra}}}"#
    );
    let mut config = config::parse(text.as_bytes()).unwrap();
    config.cache = Some(spec);
    let mut metrics_host = MockHost::default();
    let metrics = Metrics::define(&mut metrics_host);
    let shared = Rc::new(Shared::new(Some(&config), metrics));
    (Rc::new(config), shared)
}

fn token_get(token: &str, at: u64) -> MockHost {
    let mut h = MockHost::request(
        "GET",
        "/things?a=1",
        &[("host", "api.example"), ("Authorization", token)],
    );
    h.now = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + at));
    h
}

/// A policy reply: status (`None`: the call failed), headers, and the change
/// made to the echoed payload.
type PolicyReply<'a> = (
    Option<u16>,
    &'a [(&'a str, &'a str)],
    &'a dyn Fn(&mut Value),
);

/// One request through a fresh exchange of the worker; the policy (when
/// called) answers with `reply`.
fn through(
    worker: &(Rc<Config>, Rc<Shared>),
    mut h: MockHost,
    reply: Option<PolicyReply<'_>>,
) -> MockHost {
    let mut x = Exchange::new(Some(worker.0.clone()), worker.1.clone());
    if x.on_request_headers(&mut h) == Action::Continue {
        return h;
    }
    if let (Some((status, headers, change)), false) = (reply, h.dispatches().is_empty()) {
        let mut body = posted(&h);
        change(&mut body);
        answer(&mut x, &mut h, status, headers, body.to_string().as_bytes());
    }
    h
}

fn add_header(v: &mut Value) {
    v["headers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"x-user": "alice"}));
}

#[test]
fn a_cached_allow_is_replayed_without_a_call_and_changes_what_a_fresh_one_did() {
    let w = cached_worker(cache_spec(), "");
    let fresh = through(
        &w,
        token_get("Bearer A", 0),
        Some((Some(200), &[], &add_header)),
    );
    assert_eq!(fresh.dispatches().len(), 1);
    assert!(fresh.resumed());
    let cached = through(&w, token_get("Bearer A", 1), None);
    assert!(cached.dispatches().is_empty(), "a hit makes no call");
    // The same changes to the request, in the same order.
    assert_eq!(
        cached.changes(Map::RequestHeaders),
        fresh.changes(Map::RequestHeaders)
    );
    assert!(!cached.changes(Map::RequestHeaders).is_empty());
    // Another token never shares the decision.
    let other = through(
        &w,
        token_get("Bearer B", 2),
        Some((Some(200), &[], &|_| {})),
    );
    assert_eq!(other.dispatches().len(), 1);
    // Past the TTL: a call again.
    let expired = through(
        &w,
        token_get("Bearer A", 61),
        Some((Some(200), &[], &|_| {})),
    );
    assert_eq!(expired.dispatches().len(), 1);
}

#[test]
fn cache_metrics_count_hits_misses_stores_and_decisions() {
    let w = cached_worker(cache_spec(), "");
    // The metric host is per request in the mock: count across hosts.
    let hs = [
        through(
            &w,
            token_get("Bearer A", 0),
            Some((Some(200), &[], &|_| {})),
        ),
        through(&w, token_get("Bearer A", 1), None),
        through(&w, token_get("Bearer A", 2), None),
    ];
    // Every request's host got the increments of its own request; the ids are
    // the definition's positions in `Metric::all()`.
    let all = crate::metrics::Metric::all();
    let id = |m: Metric| all.iter().position(|x| *x == m).unwrap();
    let incs = |h: &MockHost, m: Metric| {
        h.metric_increments
            .iter()
            .filter(|(i, _)| *i as usize == id(m))
            .map(|(_, by)| *by)
            .sum::<i64>()
    };
    assert_eq!(incs(&hs[0], Metric::CacheMisses), 1);
    assert_eq!(incs(&hs[0], Metric::CacheStores), 1);
    assert_eq!(incs(&hs[0], Metric::Decisions(Outcome::Allow)), 1);
    assert_eq!(
        incs(
            &hs[0],
            Metric::SidebandCalls(crate::failure::Call::Request, None)
        ),
        1
    );
    for h in &hs[1..] {
        assert_eq!(incs(h, Metric::CacheHits), 1);
        assert_eq!(incs(h, Metric::CacheMisses), 0);
        assert_eq!(incs(h, Metric::Decisions(Outcome::Allow)), 1);
        assert!(h.dispatches().is_empty());
    }
}

#[test]
fn denies_are_cached_only_when_enabled_and_replayed_exactly() {
    let deny = |v: &mut Value| {
        *v = json!({"response": {"response_code": "403", "response_status": "FORBIDDEN",
            "headers": [{"www-authenticate": "Bearer"}], "body": "{\"no\":1}"}});
    };
    let w = cached_worker(cache_spec(), "");
    let first = through(&w, token_get("Bearer A", 0), Some((Some(200), &[], &deny)));
    assert_eq!(sent_status(&first), Some(403));
    let again = through(&w, token_get("Bearer A", 1), Some((Some(200), &[], &deny)));
    assert_eq!(
        again.dispatches().len(),
        1,
        "denies are not cached by default"
    );

    let spec = crate::config::CacheConfig {
        cache_denies: true,
        ..cache_spec()
    };
    let w = cached_worker(spec, "");
    let first = through(&w, token_get("Bearer A", 0), Some((Some(200), &[], &deny)));
    let again = through(&w, token_get("Bearer A", 1), None);
    assert!(again.dispatches().is_empty());
    assert_eq!(again.sent(), first.sent());
    assert!(!again.resumed());
}

#[test]
fn no_store_and_bodies_are_never_cached_and_state_is_dropped() {
    let w = cached_worker(cache_spec(), "");
    for cc in ["no-store", "private", "max-age=0", "no-cache"] {
        let tok = format!("Bearer {cc}");
        let headers: &[(&str, &str)] = &[("cache-control", cc)];
        through(&w, token_get(&tok, 0), Some((Some(200), headers, &|_| {})));
        let again = through(&w, token_get(&tok, 1), Some((Some(200), &[], &|_| {})));
        assert_eq!(again.dispatches().len(), 1, "{cc}");
    }
    // max-age shortens the TTL.
    let headers: &[(&str, &str)] = &[("cache-control", "max-age=5")];
    through(
        &w,
        token_get("Bearer M", 0),
        Some((Some(200), headers, &|_| {})),
    );
    assert!(through(&w, token_get("Bearer M", 4), None)
        .dispatches()
        .is_empty());
    let late = through(
        &w,
        token_get("Bearer M", 5),
        Some((Some(200), &[], &|_| {})),
    );
    assert_eq!(late.dispatches().len(), 1);
    // A reply with state is cached without it (the hook, its only user, is
    // off whenever the cache is on), and replayed as the fresh one was.
    let state = |v: &mut Value| {
        add_header(v);
        v["state"] = json!({"s": 1});
    };
    let fresh = through(&w, token_get("Bearer S", 0), Some((Some(200), &[], &state)));
    let again = through(&w, token_get("Bearer S", 1), None);
    assert!(again.dispatches().is_empty());
    assert_eq!(
        again.changes(Map::RequestHeaders),
        fresh.changes(Map::RequestHeaders)
    );
    assert!(!again.changes(Map::RequestHeaders).is_empty());
    // A request with a body is not looked up without key_body.
    let entries = || w.1.cache.borrow().as_ref().unwrap().len();
    let before = entries();
    for _ in 0..2 {
        let mut post = token_get("Bearer P", 0);
        post.maps
            .get_mut(&Map::RequestHeaders)
            .unwrap()
            .push(("content-length".into(), b"2".to_vec()));
        post.request_body = Some(b"{}".to_vec());
        let mut x = Exchange::new(Some(w.0.clone()), w.1.clone());
        assert_eq!(x.on_request_headers(&mut post), Action::Continue);
        assert_eq!(x.on_request_body(&mut post, 2, true), Action::Pause);
        assert_eq!(post.dispatches().len(), 1);
        allow_with(&mut x, &mut post, |_| {});
        assert!(post.resumed());
        assert_eq!(entries(), before);
    }
}

#[test]
fn with_key_body_a_request_body_is_part_of_the_key() {
    let spec = crate::config::CacheConfig {
        key_body: true,
        ..cache_spec()
    };
    let w = cached_worker(spec, "");
    let post = |body: &[u8], at: u64| {
        let mut h = token_get("Bearer P", at);
        h.maps
            .get_mut(&Map::RequestHeaders)
            .unwrap()
            .push(("content-length".into(), body.len().to_string().into_bytes()));
        h.request_body = Some(body.to_vec());
        let mut x = Exchange::new(Some(w.0.clone()), w.1.clone());
        assert_eq!(x.on_request_headers(&mut h), Action::Continue);
        let action = x.on_request_body(&mut h, body.len(), true);
        if action == Action::Pause && !h.dispatches().is_empty() {
            allow_with(&mut x, &mut h, add_header);
        }
        (action, h)
    };
    let (_, first) = post(b"{\"a\":1}", 0);
    assert_eq!(first.dispatches().len(), 1);
    let (action, hit) = post(b"{\"a\":1}", 1);
    assert_eq!(
        action,
        Action::Continue,
        "a hit continues from the body step"
    );
    assert!(hit.dispatches().is_empty());
    assert_eq!(
        hit.changes(Map::RequestHeaders),
        first.changes(Map::RequestHeaders)
    );
    let (_, other) = post(b"{\"a\":2}", 2);
    assert_eq!(other.dispatches().len(), 1, "another body, another key");
}

#[test]
fn stale_if_error_serves_an_expired_allow_within_its_bound_only() {
    capture_logs();
    let w = cached_worker(cache_spec(), "");
    through(
        &w,
        token_get("Bearer A", 0),
        Some((Some(200), &[], &add_header)),
    );
    // 10 s past expiry, the policy server times out: the stale allow.
    let stale = through(&w, token_get("Bearer A", 70), Some((None, &[], &|_| {})));
    assert!(stale.resumed());
    assert_eq!(stale.sent(), None);
    assert!(!stale.changes(Map::RequestHeaders).is_empty());
    let serves = |l: &str| l.starts_with("serving a cached allow");
    assert_eq!(logs().iter().filter(|(_, l)| serves(l)).count(), 1);
    // Again: served, not logged again.
    let again = through(
        &w,
        token_get("Bearer A", 80),
        Some((Some(503), &[], &|_| {})),
    );
    assert!(again.resumed());
    assert_eq!(logs().iter().filter(|(_, l)| serves(l)).count(), 1);
    // A 4xx is not an outage: its failure reply.
    let rejected = through(
        &w,
        token_get("Bearer A", 81),
        Some((Some(401), &[], &|_| {})),
    );
    assert_eq!(sent_status(&rejected), Some(502));
    // Past the bound (60 + 30 s): the failure's reply.
    let late = through(&w, token_get("Bearer A", 90), Some((None, &[], &|_| {})));
    assert!(!late.resumed());
    assert_eq!(sent_status(&late), Some(502));
    no_secret_logged();
}

#[test]
fn the_cache_is_off_with_the_response_hook_and_in_shadow_mode() {
    for extra in [r#""enable_response_hook":true"#, r#""mode":"shadow""#] {
        let text = format!(
            r#"{{"service_url":"https://pdp:8443/base","shared_secret":"{SECRET}","secret_header_name":"CLIENT-TOKEN",{extra}}}"#
        );
        let mut config = config::parse(text.as_bytes()).unwrap();
        config.cache = Some(cache_spec());
        let shared = Shared::new(Some(&config), Metrics::default());
        assert!(shared.cache.borrow().is_none(), "{extra}");
    }
}

#[test]
fn a_newer_answer_that_is_not_stored_replaces_the_cached_one() {
    // Allow cached at t=0 (TTL 60, stale bound 30). At t=61 the policy
    // denies (denies not cached); at t=62 the policy server fails: the old
    // allow must not be served stale after the newer deny.
    let w = cached_worker(cache_spec(), "");
    through(
        &w,
        token_get("Bearer D", 0),
        Some((Some(200), &[], &|_| {})),
    );
    let deny = |v: &mut Value| {
        *v = json!({"response": {"response_code": "403", "response_status": "FORBIDDEN",
            "headers": [], "body": "no"}})
    };
    let denied = through(&w, token_get("Bearer D", 61), Some((Some(200), &[], &deny)));
    assert_eq!(denied.sent().map(|r| r.status), Some(403));
    let outage = through(&w, token_get("Bearer D", 62), Some((None, &[], &|_| {})));
    assert!(!outage.resumed(), "the old allow was served after a deny");
    assert!(outage.sent().is_some_and(|r| r.status != 200));
    assert_eq!(w.1.cache.borrow().as_ref().unwrap().len(), 0);
    // Without the deny in between, the same outage serves the stale allow.
    through(
        &w,
        token_get("Bearer E", 0),
        Some((Some(200), &[], &|_| {})),
    );
    let stale = through(&w, token_get("Bearer E", 62), Some((None, &[], &|_| {})));
    assert!(stale.resumed());
}
