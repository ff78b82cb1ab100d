//! Tests of the HTTP toolkit, the test PKI, the echo upstream and the Sideband
//! policy server, over loopback.

// Test helpers outside #[test] functions may fail the test by panicking.
#![allow(clippy::unwrap_used, clippy::panic)]

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ping_auth_harness::certs::{KeyKind, TestPki};
use ping_auth_harness::http::{self, client, ParsedResponse, Response, Server};
use ping_auth_harness::policy::{
    ContextMethod, MockSideband, Phase, Policy, PolicyServer, RateLimit,
};
use ping_auth_harness::upstream::Upstream;
use serde_json::{json, Value};

const TIMEOUT: Duration = Duration::from_secs(5);
const LOCAL: &str = "127.0.0.1:0";
const SECRET: &str = "s3cr3t";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A request with no headers and no body.
fn send_bare(
    addr: SocketAddr,
    tls: client::Tls,
    method: &str,
    target: &str,
    timeout: Duration,
) -> std::io::Result<ParsedResponse> {
    client::send(
        addr,
        tls,
        method,
        target,
        &[] as &[(&str, &str)],
        b"",
        timeout,
    )
}

fn get(addr: SocketAddr, target: &str) -> ParsedResponse {
    send_bare(addr, None, "GET", target, TIMEOUT).unwrap()
}

/// POSTs a JSON body with the given secret header (if any).
fn post_raw(
    addr: SocketAddr,
    path: &str,
    secret: Option<(&str, &str)>,
    body: &[u8],
) -> ParsedResponse {
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(secret) = secret {
        headers.push(secret);
    }
    client::send(addr, None, "POST", path, &headers, body, TIMEOUT).unwrap()
}

fn post(addr: SocketAddr, path: &str, body: &Value) -> ParsedResponse {
    post_raw(
        addr,
        path,
        Some(("CLIENT-TOKEN", SECRET)),
        body.to_string().as_bytes(),
    )
}

fn sideband_request(server: &PolicyServer, body: &Value) -> ParsedResponse {
    post(server.addr(), "/sideband/request", body)
}

fn sideband_response(server: &PolicyServer, body: &Value) -> ParsedResponse {
    post(server.addr(), "/sideband/response", body)
}

/// A request payload as ping-auth sends it (docs/sideband-protocol.md#request-payload).
fn request_payload(method: &str, url: &str, headers: Value, body: &str) -> Value {
    json!({
        "source_ip": "203.0.113.7",
        "source_port": "51234",
        "method": method,
        "url": url,
        "body": body,
        "headers": headers,
        "http_version": "1.1"
    })
}

fn simple_request(method: &str, path: &str) -> Value {
    request_payload(
        method,
        &format!("http://api.test:8000{path}"),
        json!([{"host": "api.test:8000"}, {"accept": "*/*"}]),
        "",
    )
}

/// A response payload as ping-auth sends it (docs/sideband-protocol.md#response-payload).
fn response_payload(method: &str, path: &str, code: &str, headers: Value, body: &str) -> Value {
    json!({
        "method": method,
        "url": format!("http://api.test:8000{path}"),
        "body": body,
        "response_code": code,
        "response_status": "OK",
        "headers": headers,
        "http_version": "1.1"
    })
}

fn policy(text: &str) -> Policy {
    Policy::from_json(text).unwrap()
}

fn start(policy_text: &str) -> PolicyServer {
    let server = PolicyServer::start(policy(policy_text), LOCAL, None).unwrap();
    server.set_log_to_stderr(false);
    server
}

fn json_of(response: &ParsedResponse) -> Value {
    response
        .json()
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", response.body_str()))
}

/// Flattens `[{"name": "value"}]` into `(lower-case name, value)` pairs.
fn header_pairs(headers: &Value) -> Vec<(String, String)> {
    headers
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|object| {
            object
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.to_lowercase(), v.as_str().unwrap().to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn header_in(headers: &Value, name: &str) -> Vec<String> {
    header_pairs(headers)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

const BASIC: &str = r#"{ "shared_secrets": ["s3cr3t"] }"#;

// ---------------------------------------------------------------------------
// HTTP toolkit
// ---------------------------------------------------------------------------

#[test]
fn http_server_keep_alive_and_connection_close() {
    let server = Server::start(
        LOCAL,
        None,
        Arc::new(|request: http::Request| {
            Response::text(
                200,
                format!(
                    "{} {} {}",
                    request.method,
                    request.target,
                    request.body_str()
                ),
            )
        }),
    )
    .unwrap();
    let mut connection = client::Connection::connect(server.addr(), None, TIMEOUT).unwrap();
    let first = connection
        .send("POST", "/a?x=1", &[("X-A", "1")], b"one")
        .unwrap();
    let second = connection
        .send("GET", "/b", &[] as &[(&str, &str)], b"")
        .unwrap();
    assert_eq!(first.body_str(), "POST /a?x=1 one");
    assert_eq!(second.body_str(), "GET /b ");
    assert!(!second.closes_connection());

    // Connection: close is honoured: the server answers, says so, and closes.
    let closing = connection
        .send("GET", "/c", &[("Connection", "close")], b"")
        .unwrap();
    assert!(closing.closes_connection());
    let mut rest = Vec::new();
    let read = connection.reader().read_to_end(&mut rest).unwrap_or(0);
    assert_eq!(read, 0);
}

#[test]
fn http_chunked_bodies_both_ways_and_duplicate_headers() {
    let server = Server::start(
        LOCAL,
        None,
        Arc::new(|request: http::Request| {
            Response::text(200, request.body_str().repeat(600))
                .with_header("Set-Cookie", "a=1")
                .with_header("Set-Cookie", "b=2")
                .with_chunked()
        }),
    )
    .unwrap();
    let response = client::send(
        server.addr(),
        None,
        "POST",
        "/",
        &[("Transfer-Encoding", "chunked")],
        b"hello",
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(response.body.len(), 3000);
    assert_eq!(
        response.header_all("set-cookie"),
        vec![&b"a=1"[..], &b"b=2"[..]]
    );
    assert_eq!(
        response.header_str("transfer-encoding").as_deref(),
        Some("chunked")
    );
    let chunks = response.chunks.unwrap();
    assert_eq!(
        chunks.len(),
        3,
        "3000 bytes in chunks of {}",
        http::CHUNK_SIZE
    );
}

#[test]
fn http_head_and_bad_request() {
    let server = Server::start(LOCAL, None, Arc::new(|_| Response::text(200, "body"))).unwrap();
    let head = send_bare(server.addr(), None, "HEAD", "/", TIMEOUT).unwrap();
    assert_eq!(head.header_str("content-length").as_deref(), Some("4"));
    assert!(head.body.is_empty());

    let mut raw = TcpStream::connect(server.addr()).unwrap();
    raw.set_read_timeout(Some(TIMEOUT)).unwrap();
    raw.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let parsed = http::read_response(&mut BufReader::new(raw)).unwrap();
    assert_eq!(parsed.status, 400);
}

#[test]
fn http_delay_client_timeout_and_prompt_stop() {
    let mut server = Server::start(
        LOCAL,
        None,
        Arc::new(|_| Response::text(200, "late").with_delay(Duration::from_secs(30))),
    )
    .unwrap();
    let started = Instant::now();
    let result = send_bare(server.addr(), None, "GET", "/", Duration::from_millis(200));
    assert!(result.is_err(), "the client gives up after its timeout");
    assert!(started.elapsed() < Duration::from_secs(5));

    // An idle keep-alive connection and a sleeping handler do not block stop().
    let _idle = TcpStream::connect(server.addr()).unwrap();
    let stopping = Instant::now();
    server.stop();
    assert!(
        stopping.elapsed() < Duration::from_secs(4),
        "stop took {:?}",
        stopping.elapsed()
    );
    assert!(TcpStream::connect_timeout(&server.addr(), Duration::from_millis(500)).is_err());
}

#[test]
fn tls_server_and_clients_with_the_test_pki() {
    let pki = TestPki::generate().unwrap();
    let server = Server::start(
        LOCAL,
        Some(pki.server_config().unwrap()),
        Arc::new(|request: http::Request| Response::text(200, format!("tls={}", request.tls))),
    )
    .unwrap();
    for name in ["localhost", "pdp.test", "127.0.0.1"] {
        let tls = Some((pki.client_config().unwrap(), name.to_string()));
        let response = send_bare(server.addr(), tls, "GET", "/", TIMEOUT).unwrap();
        assert_eq!(response.body_str(), "tls=true", "server name {name}");
    }
    // A name the certificate does not cover is refused.
    let tls = Some((pki.client_config().unwrap(), "other.test".to_string()));
    assert!(send_bare(server.addr(), tls, "GET", "/", TIMEOUT).is_err());

    // mTLS: client certificates of both generated kinds are accepted.
    let mtls = Server::start(
        LOCAL,
        Some(pki.server_config_mtls(false).unwrap()),
        Arc::new(|_| Response::text(200, "ok")),
    )
    .unwrap();
    for kind in [KeyKind::EcP256, KeyKind::Ed25519] {
        let cert = pki.client_cert(kind, "client").unwrap();
        assert!(cert.chain_pem.matches("BEGIN CERTIFICATE").count() == 2);
        let tls = Some((
            pki.client_config_with_cert(&cert).unwrap(),
            "localhost".to_string(),
        ));
        let response = send_bare(mtls.addr(), tls, "GET", "/", TIMEOUT).unwrap();
        assert_eq!(response.status, 200, "{kind:?}");
    }
}

// ---------------------------------------------------------------------------
// Echo upstream
// ---------------------------------------------------------------------------

#[test]
fn upstream_echoes_and_records() {
    let upstream = Upstream::start(LOCAL, None).unwrap();
    let response = client::send(
        upstream.addr(),
        None,
        "PUT",
        "/echo/a?x=1",
        &[("X-Multi", "one"), ("X-Multi", "two")],
        br#"{"k":"v"}"#,
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header_str("x-powered-by").as_deref(),
        Some("echo-upstream")
    );
    let echo = json_of(&response);
    assert_eq!(echo["method"], "PUT");
    assert_eq!(echo["target"], "/echo/a?x=1");
    assert_eq!(echo["path"], "/echo/a");
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["body"], r#"{"k":"v"}"#);
    assert_eq!(echo["json"], json!({"k": "v"}));
    let multi: Vec<&Value> = echo["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| pair[0] == "X-Multi")
        .collect();
    assert_eq!(multi.len(), 2);

    let recorded = upstream.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].header_all("x-multi").len(), 2);
    assert_eq!(recorded[0].body, br#"{"k":"v"}"#);
}

#[test]
fn upstream_path_conventions() {
    let upstream = Upstream::start(LOCAL, None).unwrap();
    let addr = upstream.addr();
    assert_eq!(get(addr, "/status/418").status, 418);
    assert_eq!(get(addr, "/x?status=503").status, 503);
    assert_eq!(
        get(addr, "/bytes/30").body,
        b"abcdefghijklmnopqrstuvwxyzabcd"
    );
    let chunked = get(addr, "/chunked/bytes/3000");
    assert_eq!(chunked.body.len(), 3000);
    assert!(chunked.chunks.unwrap().len() > 1);
    let with_header = get(addr, "/h?header=X-Test%3A%20yes&header=Set-Cookie:a=1");
    assert_eq!(with_header.header_str("x-test").as_deref(), Some("yes"));
    assert_eq!(with_header.header_str("set-cookie").as_deref(), Some("a=1"));
    assert_eq!(json_of(&get(addr, "/json/person"))["ssn"], "123-45-6789");
    assert_eq!(get(addr, "/status/abc").status, 400);

    let started = Instant::now();
    assert_eq!(get(addr, "/slow/150").status, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[test]
fn upstream_behaviour_chosen_by_the_test() {
    let upstream = Upstream::start_with(LOCAL, None, |request| {
        (request.path() == "/custom").then(|| Response::text(201, "made"))
    })
    .unwrap();
    let custom = get(upstream.addr(), "/custom");
    assert_eq!((custom.status, custom.body_str().as_str()), (201, "made"));
    assert_eq!(
        get(upstream.addr(), "/status/404").status,
        404,
        "None falls back to the conventions"
    );
    upstream.clear_behaviour();
    assert_eq!(get(upstream.addr(), "/custom").status, 200);
    assert_eq!(upstream.requests().len(), 3);
}

// ---------------------------------------------------------------------------
// Policy server: authentication, limits, errors
// ---------------------------------------------------------------------------

#[test]
fn missing_or_wrong_secret_is_401_with_ping_message() {
    let server = start(BASIC);
    let body = simple_request("GET", "/x").to_string();
    for secret in [
        None,
        Some(("CLIENT-TOKEN", "wrong")),
        Some(("X-Other", SECRET)),
    ] {
        let response = post_raw(server.addr(), "/sideband/request", secret, body.as_bytes());
        assert_eq!(response.status, 401, "{secret:?}");
        let error = json_of(&response);
        assert_eq!(error["message"], "The Gateway Token is invalid");
        assert!(error["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    // The header name is case-insensitive.
    let ok = post_raw(
        server.addr(),
        "/sideband/request",
        Some(("client-token", SECRET)),
        body.as_bytes(),
    );
    assert_eq!(ok.status, 200);
    // The secret never appears in the log.
    assert!(server.log_lines().iter().all(|line| !line.contains(SECRET)));
    assert!(server.log_lines()[0].contains("status=401"));
}

#[test]
fn secret_rotation_and_custom_header_name() {
    let server = start(
        r#"{ "secret_header_name": "PDG-TOKEN", "shared_secrets": ["old-secret", "new-secret"] }"#,
    );
    let body = simple_request("GET", "/x").to_string();
    for secret in ["old-secret", "new-secret"] {
        let response = post_raw(
            server.addr(),
            "/sideband/request",
            Some(("PDG-TOKEN", secret)),
            body.as_bytes(),
        );
        assert_eq!(response.status, 200, "{secret}");
    }
    let default_name = post_raw(
        server.addr(),
        "/sideband/request",
        Some(("CLIENT-TOKEN", "new-secret")),
        body.as_bytes(),
    );
    assert_eq!(default_name.status, 401);

    // Rotation finished: the old secret is retired while the server runs.
    let mut rotated = server.policy();
    rotated.shared_secrets = vec!["new-secret".to_string()];
    server.set_policy(rotated).unwrap();
    let old = post_raw(
        server.addr(),
        "/sideband/request",
        Some(("PDG-TOKEN", "old-secret")),
        body.as_bytes(),
    );
    assert_eq!(old.status, 401);
    let new = post_raw(
        server.addr(),
        "/sideband/request",
        Some(("PDG-TOKEN", "new-secret")),
        body.as_bytes(),
    );
    assert_eq!(new.status, 200);
}

#[test]
fn request_limit_gives_413_json() {
    let server = start(r#"{ "shared_secrets": ["s3cr3t"], "request_limit_bytes": 1000 }"#);
    let big = request_payload(
        "POST",
        "http://api.test:8000/x",
        json!([]),
        &"a".repeat(2000),
    );
    let response = sideband_request(&server, &big);
    assert_eq!(response.status, 413);
    assert_eq!(
        response.header_str("content-type").as_deref(),
        Some("application/json")
    );
    let error = json_of(&response);
    assert!(error["message"].as_str().unwrap().contains("request limit"));
    assert!(error["id"].is_string());
    assert_eq!(
        sideband_request(&server, &simple_request("GET", "/x")).status,
        200
    );
}

#[test]
fn rate_limit_gives_429_with_retry_after() {
    let server = start(
        r#"{ "shared_secrets": ["s3cr3t"], "rate_limit": { "max_requests": 2, "window_ms": 60000 } }"#,
    );
    let body = simple_request("GET", "/x");
    assert_eq!(sideband_request(&server, &body).status, 200);
    assert_eq!(sideband_request(&server, &body).status, 200);
    let limited = sideband_request(&server, &body);
    assert_eq!(limited.status, 429);
    let retry: u64 = limited.header_str("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert!(json_of(&limited)["message"].is_string());

    // A fixed value (e.g. an HTTP-date) or no header at all, for the circuit-breaker tests.
    let mut fixed = server.policy();
    fixed.rate_limit = Some(RateLimit {
        max_requests: 1,
        window_ms: 60000,
        retry_after: Some("Wed, 21 Oct 2015 07:28:00 GMT".to_string()),
    });
    server.set_policy(fixed.clone()).unwrap();
    assert_eq!(
        sideband_request(&server, &body)
            .header_str("retry-after")
            .as_deref(),
        Some("Wed, 21 Oct 2015 07:28:00 GMT")
    );
    fixed.rate_limit = Some(RateLimit {
        max_requests: 1,
        window_ms: 60000,
        retry_after: Some("none".to_string()),
    });
    server.set_policy(fixed).unwrap();
    let none = sideband_request(&server, &body);
    assert_eq!(none.status, 429);
    assert!(none.header("retry-after").is_none());
}

#[test]
fn rate_limit_window_resets() {
    let server = start(
        r#"{ "shared_secrets": ["s3cr3t"], "rate_limit": { "max_requests": 1, "window_ms": 200 } }"#,
    );
    let body = simple_request("GET", "/x");
    assert_eq!(sideband_request(&server, &body).status, 200);
    assert_eq!(sideband_request(&server, &body).status, 429);
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(sideband_request(&server, &body).status, 200);
}

#[test]
fn bad_payloads_paths_and_methods() {
    let server = start(BASIC);
    let not_json = post_raw(
        server.addr(),
        "/sideband/request",
        Some(("CLIENT-TOKEN", SECRET)),
        b"<html>",
    );
    assert_eq!(not_json.status, 400);
    assert!(json_of(&not_json)["message"]
        .as_str()
        .unwrap()
        .contains("JSON"));

    let mut missing_url = simple_request("GET", "/x");
    missing_url.as_object_mut().unwrap().remove("url");
    let response = sideband_request(&server, &missing_url);
    assert_eq!(response.status, 400);
    assert!(json_of(&response)["message"]
        .as_str()
        .unwrap()
        .contains("`url`"));

    let bad_header = request_payload("GET", "http://h:1/", json!([{"x": 1}]), "");
    let response = sideband_request(&server, &bad_header);
    assert_eq!(response.status, 400);
    assert!(json_of(&response)["message"]
        .as_str()
        .unwrap()
        .contains("headers[0].x"));

    let bad_code = response_payload("GET", "/x", "abc", json!([]), "");
    assert_eq!(sideband_response(&server, &bad_code).status, 400);

    assert_eq!(post(server.addr(), "/other", &json!({})).status, 404);
    let get = client::send(
        server.addr(),
        None,
        "GET",
        "/sideband/request",
        &[("CLIENT-TOKEN", SECRET)],
        b"",
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(get.status, 405);
}

#[test]
fn service_url_base_path_is_accepted_and_recorded() {
    let server = start(BASIC);
    let response = post(
        server.addr(),
        "/base/sideband/request?x=1",
        &simple_request("GET", "/x"),
    );
    assert_eq!(response.status, 200);
    let exchange = &server.received()[0];
    assert_eq!(exchange.path, "/base/sideband/request");
    assert_eq!(exchange.target, "/base/sideband/request?x=1");
    assert_eq!(exchange.phase(), Some(Phase::Request));
}

#[test]
fn tls_policy_server() {
    let pki = TestPki::generate().unwrap();
    let server =
        PolicyServer::start(policy(BASIC), LOCAL, Some(pki.server_config().unwrap())).unwrap();
    server.set_log_to_stderr(false);
    assert!(server
        .service_url("https")
        .starts_with("https://127.0.0.1:"));
    let tls = Some((pki.client_config().unwrap(), "pdp.test".to_string()));
    let response = client::send(
        server.addr(),
        tls,
        "POST",
        "/sideband/request",
        &[("CLIENT-TOKEN", SECRET)],
        simple_request("GET", "/x").to_string().as_bytes(),
        TIMEOUT,
    )
    .unwrap();
    assert_eq!(response.status, 200);
    assert!(server.received()[0].tls);
}

// ---------------------------------------------------------------------------
// Policy server: request decisions
// ---------------------------------------------------------------------------

#[test]
fn allow_reply_echoes_the_request_and_adds_state() {
    let server = start(BASIC);
    let payload = request_payload(
        "POST",
        "https://api.example.com:8443/accounts/123?a=1&a=3&b=2&flag",
        json!([
            {"host": "api.example.com:8443"},
            {"content-type": "application/json"},
            {"x-multi": "one"},
            {"x-multi": "two"}
        ]),
        r#"{"amount":5}"#,
    );
    let response = sideband_request(&server, &payload);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header_str("content-type").as_deref(),
        Some("application/json")
    );
    let reply = json_of(&response);
    for field in [
        "source_ip",
        "source_port",
        "method",
        "url",
        "body",
        "headers",
        "http_version",
    ] {
        assert_eq!(reply[field], payload[field], "field {field}");
    }
    let state = reply["state"].as_str().unwrap();
    assert!(!state.is_empty());
    assert!(reply.get("response").is_none());

    // The exchange is recorded with raw bytes, parsed JSON and the reply.
    let exchange = &server.received()[0];
    assert_eq!(exchange.header_str("client-token").as_deref(), Some(SECRET));
    assert_eq!(exchange.json.as_ref(), Some(&payload));
    assert_eq!(exchange.body, payload.to_string().as_bytes());
    assert_eq!(exchange.reply.as_ref().unwrap().json(), Some(reply));
    let log = server.log_lines();
    assert_eq!(log.len(), 1);
    assert!(log[0].contains("decision=allow") && log[0].contains("method=POST"));
    assert!(log[0].contains("path=/accounts/123"));
}

#[test]
fn absent_body_stays_absent_and_client_certificate_is_echoed() {
    let server = start(BASIC);
    let mut payload = simple_request("GET", "/x");
    let object = payload.as_object_mut().unwrap();
    object.remove("body");
    object.insert(
        "client_certificate".into(),
        json!({"kty": "EC", "x5c": ["MII"]}),
    );
    let reply = json_of(&sideband_request(&server, &payload));
    assert!(reply.get("body").is_none());
    assert_eq!(reply["client_certificate"], payload["client_certificate"]);
}

#[test]
fn deny_rule_returns_a_response_object() {
    let server = start(
        r#"{
          "shared_secrets": ["s3cr3t"],
          "request_rules": [{
            "name": "deny-admin",
            "match": { "path": "/admin*", "methods": ["GET", "post"] },
            "deny": {
              "status": 403,
              "headers": { "content-type": "application/json", "www-authenticate": ["Bearer a", "Bearer b"] },
              "body": { "code": "ACCESS_DENIED", "message": "Forbidden" }
            }
          }]
        }"#,
    );
    let reply = json_of(&sideband_request(
        &server,
        &simple_request("POST", "/admin/users"),
    ));
    let denial = &reply["response"];
    assert_eq!(denial["response_code"], "403");
    assert_eq!(denial["response_status"], "FORBIDDEN");
    assert_eq!(
        header_in(&denial["headers"], "www-authenticate"),
        vec!["Bearer a", "Bearer b"]
    );
    let body: Value = serde_json::from_str(denial["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["message"], "Forbidden");
    assert!(reply.get("state").is_none());
    assert!(server.log_lines()[0].contains(
        "decision=deny phase=request rule=deny-admin method=POST path=/admin/users status=403"
    ));

    // Other paths and methods are not denied.
    assert!(json_of(&sideband_request(
        &server,
        &simple_request("GET", "/public")
    ))
    .get("response")
    .is_none());
    assert!(
        json_of(&sideband_request(&server, &simple_request("PUT", "/admin")))
            .get("response")
            .is_none()
    );
}

#[test]
fn header_and_subject_conditions() {
    let server = start(
        r#"{
          "shared_secrets": ["s3cr3t"],
          "request_rules": [
            { "name": "no-app", "match": { "headers_absent": ["x-app-id"] }, "deny": { "status": 400, "body": "app id needed" } },
            { "name": "bad-app", "match": { "headers": { "x-app-id": "bad*" } }, "deny": { "status": 403 } },
            { "name": "anonymous", "match": { "authenticated": false }, "deny": { "status": 401 } },
            { "name": "mallory", "match": { "subject": "mallory" }, "deny": { "status": 403, "body": "bye ${subject}" } },
            { "name": "query", "match": { "query": { "debug": "tr*" } }, "deny": { "status": 418 } },
            { "name": "body", "match": { "body_fields": { "/role": "admin" } }, "deny": { "status": 409 } }
          ]
        }"#,
    );
    let with = |headers: Value, url: &str, body: &str| {
        let reply = json_of(&sideband_request(
            &server,
            &request_payload("POST", url, headers, body),
        ));
        reply["response"]["response_code"]
            .as_str()
            .map(str::to_string)
    };
    let url = "http://h:1/p";
    let token = |sub: &str| format!(r#"Bearer {{"active":true,"sub":"{sub}"}}"#);
    assert_eq!(with(json!([]), url, "").as_deref(), Some("400"));
    assert_eq!(
        with(json!([{"X-App-Id": "bad-1"}]), url, "").as_deref(),
        Some("403")
    );
    assert_eq!(
        with(json!([{"x-app-id": "ok"}]), url, "").as_deref(),
        Some("401")
    );
    assert_eq!(
        with(json!([{"x-app-id": "ok"}, {"authorization": r#"Bearer {"active":false,"sub":"alice"}"#}]), url, "").as_deref(),
        Some("401"),
        "an inactive token is not authenticated"
    );
    assert_eq!(
        with(
            json!([{"x-app-id": "ok"}, {"authorization": token("mallory")}]),
            url,
            ""
        )
        .as_deref(),
        Some("403")
    );
    let ok_headers = json!([{"x-app-id": "ok"}, {"authorization": token("alice")}]);
    assert_eq!(
        with(ok_headers.clone(), "http://h:1/p?debug=true", "").as_deref(),
        Some("418")
    );
    assert_eq!(
        with(ok_headers.clone(), url, r#"{"role":"admin"}"#).as_deref(),
        Some("409")
    );
    assert_eq!(with(ok_headers, url, r#"{"role":"user"}"#), None);

    let denial = json_of(&sideband_request(
        &server,
        &request_payload(
            "GET",
            url,
            json!([{"x-app-id": "ok"}, {"authorization": token("mallory")}]),
            "",
        ),
    ));
    assert_eq!(denial["response"]["body"], "bye mallory");
}

#[test]
fn modify_rules_change_headers_url_method_and_body() {
    let server = start(
        r#"{
          "shared_secrets": ["s3cr3t"],
          "request_rules": [
            {
              "name": "headers",
              "match": { "path": "/api/*" },
              "modify": {
                "set_headers": { "X-User": "${subject}", "x-multi": ["a", "b"] },
                "add_headers": { "x-extra": "1" },
                "remove_headers": ["x-app-id", "Cookie"]
              }
            },
            {
              "name": "url",
              "match": { "path": "/api/old" },
              "modify": {
                "set_method": "PATCH",
                "set_path": "/api/new",
                "rename_query_params": { "operator": "compare" },
                "remove_query_params": ["debug"],
                "set_query_params": { "name": "a b" }
              }
            },
            {
              "name": "body",
              "match": { "methods": ["PUT"] },
              "modify": { "remove_body_fields": ["audit"], "set_body_fields": { "/meta/checked": true } },
              "final": true
            },
            { "name": "never", "match": {}, "deny": { "status": 500 } }
          ]
        }"#,
    );
    let headers = json!([
        {"host": "h:1"},
        {"x-app-id": "PNG"},
        {"cookie": "a=1"},
        {"x-multi": "one"},
        {"authorization": r#"Bearer {"active":true,"sub":"alice"}"#}
    ]);
    let payload = request_payload(
        "PUT",
        "http://h:1/api/old?name=sedan&operator=contains&debug=1",
        headers,
        r#"{"id":"d1","audit":"x"}"#,
    );
    let response = sideband_request(&server, &payload);
    let reply = json_of(&response);
    assert!(reply.get("response").is_none(), "{reply}");
    assert_eq!(reply["method"], "PATCH");
    assert_eq!(
        reply["url"],
        "http://h:1/api/new?name=a%20b&compare=contains"
    );
    let body: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"id": "d1", "meta": {"checked": true}}));
    assert_eq!(header_in(&reply["headers"], "x-user"), vec!["alice"]);
    assert_eq!(header_in(&reply["headers"], "x-multi"), vec!["a", "b"]);
    assert_eq!(header_in(&reply["headers"], "x-extra"), vec!["1"]);
    assert!(header_in(&reply["headers"], "x-app-id").is_empty());
    assert!(header_in(&reply["headers"], "cookie").is_empty());
    assert_eq!(header_in(&reply["headers"], "host"), vec!["h:1"]);
    assert!(reply["state"].is_string());
    let log = server.log_lines();
    assert!(
        log[0].contains("decision=modify") && log[0].contains("rule=headers,url,body"),
        "{log:?}"
    );
}

#[test]
fn body_can_be_replaced_or_removed_and_query_replaced() {
    let server = start(
        r#"{
          "shared_secrets": ["s3cr3t"],
          "request_rules": [
            { "name": "replace", "match": { "path": "/replace" }, "modify": { "set_body": "new", "set_query": "" } },
            { "name": "remove", "match": { "path": "/remove" }, "modify": { "remove_body": true, "set_query": "z=9" } }
          ]
        }"#,
    );
    let replaced = json_of(&sideband_request(
        &server,
        &request_payload("POST", "http://h:1/replace?a=1", json!([]), "old"),
    ));
    assert_eq!(replaced["body"], "new");
    assert_eq!(replaced["url"], "http://h:1/replace");
    let removed = json_of(&sideband_request(
        &server,
        &request_payload("POST", "http://h:1/remove", json!([]), "old"),
    ));
    assert!(removed.get("body").is_none());
    assert_eq!(removed["url"], "http://h:1/remove?z=9");
}

#[test]
fn default_deny_and_explicit_allow() {
    let server = start(
        r#"{
          "shared_secrets": ["s3cr3t"],
          "default_request_decision": "deny",
          "request_rules": [ { "name": "public", "match": { "path": "/public/*" }, "allow": true } ]
        }"#,
    );
    let allowed = json_of(&sideband_request(
        &server,
        &simple_request("GET", "/public/a"),
    ));
    assert!(allowed.get("response").is_none());
    let denied = json_of(&sideband_request(
        &server,
        &simple_request("GET", "/private"),
    ));
    assert_eq!(denied["response"]["response_code"], "403");
    assert!(server.log_lines()[1].contains("rule=default"));
}

const CACHING: &str = r#"{
  "shared_secrets": ["s3cr3t"],
  "cache_control": "max-age=60",
  "request_rules": [
    { "name": "tag", "match": { "path": "/api/*" },
      "modify": { "add_headers": { "x-tag": "1" } }, "cache_control": "private, max-age=5" },
    { "name": "deny-admin", "match": { "path": "/api/admin" },
      "deny": { "status": 403 }, "cache_control": "no-store" },
    { "name": "public", "match": { "path": "/api/public" }, "allow": true },
    { "name": "open", "match": { "path": "/open" }, "allow": true, "cache_control": "no-cache" }
  ],
  "response_rules": [
    { "name": "hide", "match": { "status": 200 },
      "modify": { "remove_headers": ["x-powered-by"] }, "cache_control": "max-age=30" },
    { "name": "teapot", "match": { "path": "/tea" },
      "deny": { "status": 418 }, "cache_control": "no-store" }
  ]
}"#;

/// Every `Cache-Control` line of a reply.
fn cache_control(response: &ParsedResponse) -> Vec<String> {
    response
        .header_all("cache-control")
        .into_iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn cache_control_comes_from_the_last_matching_rule_that_has_one_or_the_policy() {
    let server = start(CACHING);
    let cases = [
        // tag, then the deny: the deny's value.
        ("/api/admin", "no-store", Some("403")),
        // tag, then an allow without a value: tag's.
        ("/api/public", "private, max-age=5", None),
        ("/api/x", "private, max-age=5", None),
        ("/open", "no-cache", None),
        // No rule: the policy's.
        ("/elsewhere", "max-age=60", None),
    ];
    for (path, expected, denied) in cases {
        let reply = sideband_request(&server, &simple_request("GET", path));
        assert_eq!(reply.status, 200, "{path}");
        assert_eq!(cache_control(&reply), [expected], "{path}");
        let code = json_of(&reply)["response"]["response_code"]
            .as_str()
            .map(str::to_string);
        assert_eq!(code.as_deref(), denied, "{path}");
    }
    let responses = [
        ("/x", "200", "max-age=30", "200"),
        ("/tea", "200", "no-store", "418"),
        ("/x", "500", "max-age=60", "500"),
    ];
    for (path, code, expected, returned) in responses {
        let payload = response_payload("GET", path, code, json!([{"x-powered-by": "e"}]), "{}");
        let reply = sideband_response(&server, &payload);
        assert_eq!(cache_control(&reply), [expected], "{path} {code}");
        assert_eq!(json_of(&reply)["response_code"], returned, "{path} {code}");
    }
    // Rejections before the rules carry none.
    let rejected = post_raw(
        server.addr(),
        "/sideband/request",
        Some(("CLIENT-TOKEN", "wrong")),
        b"{}",
    );
    assert_eq!(rejected.status, 401);
    assert!(cache_control(&rejected).is_empty());
    // Without a policy value, a reply no rule gives one has none.
    let plain = start(
        r#"{ "shared_secrets": ["s3cr3t"],
             "request_rules": [ { "name": "r", "match": { "path": "/r" }, "allow": true, "cache_control": "max-age=1" } ] }"#,
    );
    assert!(cache_control(&sideband_request(&plain, &simple_request("GET", "/x"))).is_empty());
    assert_eq!(
        cache_control(&sideband_request(&plain, &simple_request("GET", "/r"))),
        ["max-age=1"]
    );
    // The pure decision functions report it too.
    let outcome = ping_auth_harness::policy::decide_request(
        &policy(CACHING),
        &ping_auth_harness::policy::RequestPayload::parse(&simple_request("GET", "/api/admin"))
            .unwrap(),
    );
    assert_eq!(outcome.cache_control.as_deref(), Some("no-store"));
}

#[test]
fn calls_are_counted_per_phase_and_per_rule() {
    let server = start(CACHING);
    for path in ["/api/admin", "/api/public", "/api/x", "/elsewhere"] {
        sideband_request(&server, &simple_request("GET", path));
    }
    for path in ["/x", "/tea"] {
        let payload = response_payload("GET", path, "200", json!([]), "");
        sideband_response(&server, &payload);
    }
    post_raw(
        server.addr(),
        "/sideband/request",
        Some(("CLIENT-TOKEN", "wrong")),
        b"{}",
    );
    let requests = server.received_for(Phase::Request);
    assert_eq!(requests.len(), 5);
    assert_eq!(server.received_for(Phase::Response).len(), 2);
    assert_eq!(requests[0].rules, ["tag", "deny-admin"]);
    assert!(requests[0].matched("deny-admin") && !requests[1].matched("deny-admin"));
    assert!(requests[3].rules.is_empty(), "no rule matched");
    assert!(requests[4].rules.is_empty(), "rejected before the rules");
    assert_eq!(server.matched_count("tag"), 3);
    assert_eq!(server.matched_count("deny-admin"), 1);
    assert_eq!(server.matched_count("hide"), 2);
    assert_eq!(server.matched_count("teapot"), 1);
    assert_eq!(server.matched_count("open"), 0);
    let denied_responses = server
        .received_for(Phase::Response)
        .iter()
        .filter(|e| e.matched("teapot"))
        .count();
    assert_eq!(denied_responses, 1);
    // The default deny counts as the rule `default`.
    let strict = start(r#"{ "shared_secrets": ["s3cr3t"], "default_request_decision": "deny" }"#);
    sideband_request(&strict, &simple_request("GET", "/x"));
    assert_eq!(strict.matched_count("default"), 1);
    server.clear_received();
    assert_eq!(server.matched_count("tag"), 0);
}

#[test]
fn cache_control_values_are_validated() {
    let cases: &[(&str, &str, &str)] = &[
        (
            r#"{ "shared_secrets": ["s"], "cache_control": "" }"#,
            "cache_control",
            "empty",
        ),
        (
            r#"{ "shared_secrets": ["s"], "cache_control": "max-age=1\r\nX-Evil: 1" }"#,
            "cache_control",
            "line breaks",
        ),
        (
            r#"{ "shared_secrets": ["s"], "request_rules": [ {"name": "c", "allow": true, "cache_control": "no-store\n"} ] }"#,
            "request_rules[0] \"c\".cache_control",
            "line breaks",
        ),
        (
            r#"{ "shared_secrets": ["s"], "response_rules": [ {"name": "n", "allow": true, "cache_control": 5} ] }"#,
            "response_rules[0] \"n\"",
            "invalid type",
        ),
        (
            r#"{ "shared_secrets": ["s"], "request_rules": [ {"name": "m", "match": {"cache_control": "x"}, "allow": true} ] }"#,
            "request_rules[0] \"m\".match",
            "unknown field `cache_control`",
        ),
    ];
    for (text, location, message) in cases {
        let error = Policy::from_json(text).expect_err(text);
        assert!(
            error.location.contains(location) && error.to_string().contains(message),
            "for {text}\n got: {error}\n want location {location:?} and message {message:?}"
        );
    }
    let mut bad = policy(BASIC);
    bad.cache_control = Some("a\u{7}b".to_string());
    assert!(PolicyServer::start(bad, LOCAL, None).is_err());
    assert!(
        policy(r#"{ "shared_secrets": ["s"], "cache_control": "public, max-age=300" }"#)
            .cache_control
            .is_some()
    );
}

// ---------------------------------------------------------------------------
// Policy server: response decisions and request context
// ---------------------------------------------------------------------------

#[test]
fn response_passes_through_unchanged_without_rules() {
    let server = start(BASIC);
    let headers =
        json!([{"content-type": "text/plain"}, {"set-cookie": "a=1"}, {"set-cookie": "b=2"}]);
    let mut payload = response_payload("GET", "/x", "201", headers.clone(), "made");
    payload["response_status"] = json!("");
    let reply = json_of(&sideband_response(&server, &payload));
    assert_eq!(reply["response_code"], "201");
    assert_eq!(reply["response_status"], "CREATED");
    assert_eq!(reply["headers"], headers);
    assert_eq!(reply["body"], "made");
    assert!(server.log_lines()[0]
        .contains("decision=allow phase=response rule=- method=GET path=/x status=201"));
}

#[test]
fn response_rules_remove_headers_redact_and_change_status() {
    let server = start(
        r#"{
          "shared_secrets": ["s3cr3t"],
          "response_rules": [
            { "name": "hide", "match": { "response_headers": { "x-powered-by": "*" } }, "modify": { "remove_headers": ["X-Powered-By"] } },
            { "name": "redact", "match": { "path": "/people/*", "status": [200, 201] }, "modify": { "redact_fields": ["ssn", "/owner/email"] } },
            { "name": "teapot", "match": { "path": "/tea", "methods": ["GET"] }, "modify": { "set_status": 418, "set_headers": { "x-tea": "yes" } } }
          ]
        }"#,
    );
    let headers =
        json!([{"Content-Type": "application/json"}, {"X-Powered-By": "SmartHub Server Supreme"}]);
    let body = r#"{"name":"a","ssn":"1","owner":{"email":"e","ssn":"2"}}"#;
    let reply = json_of(&sideband_response(
        &server,
        &response_payload("GET", "/people/1", "200", headers.clone(), body),
    ));
    assert_eq!(
        reply["headers"],
        json!([{"Content-Type": "application/json"}])
    );
    let redacted: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
    assert_eq!(
        redacted,
        json!({"name": "a", "ssn": "***", "owner": {"email": "***", "ssn": "***"}})
    );
    assert_eq!(reply["response_code"], "200");

    let tea = json_of(&sideband_response(
        &server,
        &response_payload("GET", "/tea", "200", json!([]), ""),
    ));
    assert_eq!(tea["response_code"], "418");
    assert_eq!(tea["response_status"], "I'M A TEAPOT");
    assert_eq!(header_in(&tea["headers"], "x-tea"), vec!["yes"]);

    // A 404 is not redacted (status condition), and a non-JSON body is left alone.
    let not_found = json_of(&sideband_response(
        &server,
        &response_payload("GET", "/people/1", "404", json!([]), body),
    ));
    assert_eq!(not_found["body"], body);
    let text = json_of(&sideband_response(
        &server,
        &response_payload("GET", "/people/1", "200", json!([]), "ssn=1"),
    ));
    assert_eq!(text["body"], "ssn=1");
}

#[test]
fn response_deny_has_the_response_shape() {
    let server = start(
        r#"{
          "shared_secrets": ["s3cr3t"],
          "response_rules": [{
            "name": "limit",
            "match": { "methods": ["PATCH"], "body_fields": { "callsRemaining": 0 } },
            "deny": { "status": 402, "body": { "message": "call limit reached" } }
          }]
        }"#,
    );
    let payload = response_payload(
        "PATCH",
        "/controls/1",
        "200",
        json!([{"x-a": "1"}]),
        r#"{"callsRemaining":0}"#,
    );
    let reply = json_of(&sideband_response(&server, &payload));
    assert_eq!(reply["response_code"], "402");
    assert_eq!(reply["response_status"], "PAYMENT REQUIRED");
    assert_eq!(
        reply["headers"],
        json!([{"content-type": "application/json"}])
    );
    let body: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
    assert!(body["message"].as_str().unwrap().contains("limit"));
    let allowed = response_payload(
        "PATCH",
        "/controls/1",
        "200",
        json!([]),
        r#"{"callsRemaining":3}"#,
    );
    assert_eq!(
        json_of(&sideband_response(&server, &allowed))["response_code"],
        "200"
    );
}

const CONTEXT_POLICY: &str = r#"{
  "shared_secrets": ["s3cr3t"],
  "request_context_method": "METHOD",
  "response_rules": [
    { "name": "only-for-alice", "match": { "subject": "alice", "request_headers": { "x-app-id": "PNG" } },
      "modify": { "set_headers": { "x-seen-by": "${subject}" } } }
  ]
}"#;

fn alice_request() -> Value {
    request_payload(
        "GET",
        "http://h:1/p",
        json!([{"x-app-id": "PNG"}, {"authorization": r#"Bearer {"active":true,"sub":"alice"}"#}]),
        "",
    )
}

#[test]
fn state_context_round_trip() {
    let server = start(&CONTEXT_POLICY.replace("METHOD", "state"));
    let allow = json_of(&sideband_request(&server, &alice_request()));
    let state = allow["state"].clone();
    assert!(state.is_string());

    let mut response = response_payload("GET", "/p", "200", json!([]), "");
    response["state"] = state;
    let reply = json_of(&sideband_response(&server, &response));
    assert_eq!(header_in(&reply["headers"], "x-seen-by"), vec!["alice"]);

    // Without state the context is unknown and the rule cannot match.
    response.as_object_mut().unwrap().remove("state");
    let reply = json_of(&sideband_response(&server, &response));
    assert!(header_in(&reply["headers"], "x-seen-by").is_empty());

    // A corrupt state is a 400.
    response["state"] = json!("not-a-state");
    assert_eq!(sideband_response(&server, &response).status, 400);
}

#[test]
fn request_context_method_uses_the_request_field() {
    let server = start(&CONTEXT_POLICY.replace("METHOD", "request"));
    let allow = json_of(&sideband_request(&server, &alice_request()));
    assert!(allow.get("state").is_none());

    let mut response = response_payload("GET", "/p", "200", json!([]), "");
    response["request"] = alice_request();
    let reply = json_of(&sideband_response(&server, &response));
    assert_eq!(header_in(&reply["headers"], "x-seen-by"), vec!["alice"]);

    response["request"] = json!({"method": "GET"});
    assert_eq!(sideband_response(&server, &response).status, 400);
}

#[test]
fn none_context_method_has_no_state_and_no_context() {
    let server = start(&CONTEXT_POLICY.replace("METHOD", "none"));
    assert_eq!(server.policy().request_context_method, ContextMethod::None);
    let allow = json_of(&sideband_request(&server, &alice_request()));
    assert!(allow.get("state").is_none());
    let mut response = response_payload("GET", "/p", "200", json!([]), "");
    response["request"] = alice_request();
    let reply = json_of(&sideband_response(&server, &response));
    assert!(header_in(&reply["headers"], "x-seen-by").is_empty());
}

// ---------------------------------------------------------------------------
// Policy files
// ---------------------------------------------------------------------------

#[test]
fn bad_policy_files_say_what_and_where() {
    let cases: &[(&str, &str, &str)] = &[
        ("{ \"shared_secrets\": [\"s\"], }", "line 1", "JSON"),
        ("[]", "top level", "JSON object"),
        (r#"{ "request_rules": [] }"#, "top level", "shared_secrets"),
        (
            r#"{ "shared_secrets": [] }"#,
            "shared_secrets",
            "at least one",
        ),
        (
            r#"{ "shared_secrets": ["s"], "secrets": [] }"#,
            "top level",
            "unknown field `secrets`",
        ),
        (
            r#"{ "shared_secrets": ["s"], "request_context_method": "cookie" }"#,
            "top level",
            "cookie",
        ),
        (
            r#"{ "shared_secrets": ["s"], "request_rules": [ {"name": "ok", "allow": true}, {"name": "typo", "match": {"pth": "/x"}, "allow": {}} ] }"#,
            "request_rules[1] \"typo\".match",
            "unknown field `pth`",
        ),
        (
            r#"{ "shared_secrets": ["s"], "request_rules": [ {"name": "two", "allow": true, "deny": {"status": 403}} ] }"#,
            "request_rules[0] \"two\"",
            "exactly one",
        ),
        (
            r#"{ "shared_secrets": ["s"], "request_rules": [ {"match": {}} ] }"#,
            "request_rules[0]",
            "exactly one",
        ),
        (
            r#"{ "shared_secrets": ["s"], "request_rules": [ {"name": "code", "deny": {"status": 999}} ] }"#,
            "request_rules[0] \"code\".deny.status",
            "999",
        ),
        (
            r#"{ "shared_secrets": ["s"], "request_rules": [ {"name": "p", "modify": {"set_path": "relative"}} ] }"#,
            "request_rules[0] \"p\".modify.set_path",
            "must start with '/'",
        ),
        (
            r#"{ "shared_secrets": ["s"], "response_rules": [ {"name": "h", "modify": {"remove_headers": ["bad name"]}} ] }"#,
            "response_rules[0] \"h\".modify.remove_headers",
            "not a valid header name",
        ),
        (
            r#"{ "shared_secrets": ["s"], "response_rules": [ {"name": "s", "match": {"status": "200"}, "allow": true} ] }"#,
            "response_rules[0] \"s\".match",
            "StatusList",
        ),
        (
            r#"{ "shared_secrets": ["s"], "rate_limit": {"max_requests": 0} }"#,
            "rate_limit",
            "at least 1",
        ),
    ];
    for (text, location, message) in cases {
        let error = Policy::from_json(text).expect_err(text);
        assert!(
            error.location.contains(location) && error.to_string().contains(message),
            "for {text}\n got: {error}\n want location {location:?} and message {message:?}"
        );
    }
    let missing = Policy::from_file(Path::new("/nonexistent/policy.json")).unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/policy.json"));
    // The server refuses an invalid policy instead of starting.
    assert!(PolicyServer::start(Policy::allow_all(""), LOCAL, None).is_err());
}

fn example(name: &str) -> Policy {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    Policy::from_file(&path).unwrap()
}

#[test]
fn demo_policy_walkthrough() {
    let server = PolicyServer::start(example("demo-policy.json"), LOCAL, None).unwrap();
    server.set_log_to_stderr(false);
    let secret = ("CLIENT-TOKEN", "demo-secret");
    let send = |path: &str, body: &Value| {
        post_raw(
            server.addr(),
            path,
            Some(secret),
            body.to_string().as_bytes(),
        )
    };

    let allowed = json_of(&send(
        "/sideband/request",
        &simple_request("GET", "/echo/hello"),
    ));
    assert_eq!(header_in(&allowed["headers"], "x-user"), vec!["demo"]);
    let admin = json_of(&send(
        "/sideband/request",
        &simple_request("GET", "/echo/admin/users"),
    ));
    assert_eq!(admin["response"]["response_code"], "403");
    let other = json_of(&send(
        "/sideband/request",
        &simple_request("GET", "/elsewhere"),
    ));
    assert_eq!(other["response"]["response_code"], "403");

    let mut response = response_payload(
        "GET",
        "/echo/json/person",
        "200",
        json!([{"content-type": "application/json"}, {"x-powered-by": "echo-upstream"}]),
        r#"{"name":"Alice","ssn":"123-45-6789"}"#,
    );
    response["state"] = allowed["state"].clone();
    let reply = json_of(&send("/sideband/response", &response));
    assert_eq!(reply["body"], r#"{"name":"Alice","ssn":"***"}"#);
    assert_eq!(
        reply["headers"],
        json!([{"content-type": "application/json"}])
    );
}

#[test]
fn pdg_sideband_test_environment_vectors() {
    let server = PolicyServer::start(example("pdg-vectors-policy.json"), LOCAL, None).unwrap();
    server.set_log_to_stderr(false);
    let secret = ("PDG-TOKEN", "5e96eaf6-251e-4555-9434-d1b224f05e99");
    let send = |path: &str, body: &Value| {
        let response = post_raw(
            server.addr(),
            path,
            Some(secret),
            body.to_string().as_bytes(),
        );
        assert_eq!(response.status, 200, "{}", response.body_str());
        json_of(&response)
    };
    let token = |sub: &str| format!(r#"Bearer {{"active":true,"sub":"{sub}"}}"#);
    // PDG's fixtures send source_port and response_code as numbers and keep header case.
    let pdg_request = |method: &str, url: &str, body: Option<&str>| {
        let mut payload = json!({
            "source_ip": "10.1.2.3", "source_port": 51234, "method": method, "url": url,
            "http_version": "1.1",
            "headers": [{"Authorization": token("7d9fc465")}, {"X-App-Id": "PNG"}]
        });
        if let Some(body) = body {
            payload["body"] = json!(body);
        }
        payload
    };

    // 1 - Retrieve homes: allowed; SH-USER added, X-App-Id removed.
    let homes = send(
        "/sideband/request",
        &pdg_request("GET", "http://localhost:6443/homes", None),
    );
    assert!(homes.get("response").is_none());
    assert_eq!(header_in(&homes["headers"], "sh-user"), vec!["7d9fc465"]);
    assert!(header_in(&homes["headers"], "x-app-id").is_empty());
    assert_eq!(homes["source_port"], 51234);

    // 2 - Retrieve devices: X-Powered-By is removed.
    let devices = send(
        "/sideband/response",
        &json!({"response_code": 200, "response_status": "OK", "method": "GET",
                "url": "http://localhost:6443/devices", "http_version": "1.1",
                "headers": [{"X-Powered-By": "SmartHub Server Supreme"}]}),
    );
    assert_eq!(devices["response_code"], "200");
    assert!(header_in(&devices["headers"], "x-powered-by").is_empty());

    // 3 - Retrieve devices by name: the query is transformed.
    let by_name = send(
        "/sideband/request",
        &pdg_request(
            "GET",
            "http://localhost:6443/devices?name=sedan&operator=contains",
            None,
        ),
    );
    assert!(
        by_name["url"].as_str().unwrap().contains("compare=co"),
        "{}",
        by_name["url"]
    );

    // 4 - Retrieve a person: the banned requester gets 403 "banned" (state and request modes).
    let banned = pdg_request("GET", "http://localhost:6443/persons/1", None);
    let mut banned = banned;
    banned["headers"] = json!([{"Authorization": token("l33t_haxor")}, {"X-App-Id": "PNG"}]);
    let state = send("/sideband/request", &banned)["state"].clone();
    let person_response = |context: (&str, Value)| {
        let mut payload = json!({
            "response_code": "200", "response_status": "OK", "method": "GET",
            "url": "http://localhost:6443/persons/1", "http_version": "1.1",
            "headers": [{"X-Banned-Users": "someone,l33t_haxor"}, {"X-Powered-By": "SmartHub Server Supreme"}],
            "body": "{\"id\":\"1\",\"username\":\"l33t_haxor\"}"
        });
        payload[context.0] = context.1;
        payload
    };
    let person = send("/sideband/response", &person_response(("state", state)));
    assert_eq!(person["response_code"], "403");
    let message: Value = serde_json::from_str(person["body"].as_str().unwrap()).unwrap();
    assert!(message["message"].as_str().unwrap().contains("banned"));
    let mut request_mode = server.policy();
    request_mode.request_context_method = ContextMethod::Request;
    server.set_policy(request_mode).unwrap();
    let person = send(
        "/sideband/response",
        &person_response(("request", banned.clone())),
    );
    assert_eq!(person["response_code"], "403");
    // A user who is not banned gets the person (without X-Powered-By).
    let person = send(
        "/sideband/response",
        &person_response((
            "request",
            pdg_request("GET", "http://localhost:6443/persons/1", None),
        )),
    );
    assert_eq!(person["response_code"], "200");
    assert_eq!(
        header_in(&person["headers"], "x-banned-users"),
        vec!["someone,l33t_haxor"]
    );

    // 5 - Add a device to a home: audit is not forwarded.
    let device = send(
        "/sideband/request",
        &pdg_request(
            "PUT",
            "http://localhost:6443/homes/h1/devices",
            Some(r#"{"id":"d1","audit": "guid"}"#),
        ),
    );
    assert!(!device["body"].as_str().unwrap().contains("audit"));
    assert!(device["body"].as_str().unwrap().contains("d1"));

    // 6 - Change a control state: no calls remaining → 402 "limit".
    let control = send(
        "/sideband/response",
        &json!({"response_code": 200, "response_status": "OK", "method": "PATCH",
                "url": "http://localhost:6443/controls/c1", "http_version": "1.1",
                "headers": [{"X-App-Id": "PNG"}],
                "body": "{\"name\": \"power\", \"value\":\"80000\",\"status\":\"on\", \"callsRemaining\": 0, \"readOnly\": false}"}),
    );
    assert_eq!(control["response_code"], "402");
    let message: Value = serde_json::from_str(control["body"].as_str().unwrap()).unwrap();
    assert!(message["message"].as_str().unwrap().contains("limit"));
}

// ---------------------------------------------------------------------------
// Scriptable mock
// ---------------------------------------------------------------------------

#[test]
fn mock_sideband_scripts_answers_and_records() {
    let mock = MockSideband::start(LOCAL, None, |exchange| match exchange.phase() {
        Some(Phase::Request) => Response::text(500, "<html>oops</html>"),
        _ => Response::json(429, &json!({"message": "slow down"})).with_header("Retry-After", "3"),
    })
    .unwrap();
    let first = post(mock.addr(), "/sideband/request", &json!({"a": 1}));
    assert_eq!(
        (first.status, first.body_str().as_str()),
        (500, "<html>oops</html>")
    );
    let second = post(mock.addr(), "/sideband/response", &json!({"b": 2}));
    assert_eq!(second.status, 429);
    assert_eq!(second.header_str("retry-after").as_deref(), Some("3"));

    let received = mock.received();
    assert_eq!(received.len(), 2);
    assert_eq!(received[0].field("a"), Some(&json!(1)));
    assert_eq!(
        received[0].header_str("client-token").as_deref(),
        Some(SECRET)
    );
    assert_eq!(received[1].reply.as_ref().unwrap().status, 429);
    mock.clear_received();
    assert!(mock.received().is_empty());
}
