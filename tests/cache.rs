//! The decision cache and the metrics, through the built `.wasm` in the
//! emulator (Kong host, one worker) against a scripted policy server and the
//! echo upstream: what the client, the upstream and the policy server see,
//! and the metric values the host holds afterwards.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod common;

use common::*;
use ping_auth_harness::emulator::LabelPattern;
use ping_auth_harness::http::{Request, Response};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An allow that adds `x-user: <the token>` (a header the upstream shows).
fn allow_user(req: &Request) -> Response {
    let mut v = echo(req);
    let token = payload_headers(&v)
        .into_iter()
        .find(|(n, _)| n == "authorization")
        .map(|(_, t)| t)
        .unwrap_or_default();
    v["headers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"x-user": token}));
    Response::json(200, &v)
}

fn hook_off_with_cache(cache: Value) -> Value {
    json!({"enable_response_hook": false, "cache": cache})
}

fn as_user(token: &str) -> ping_auth_harness::emulator::ClientRequest {
    with_header(get("/things?a=1"), "Authorization", token)
}

/// The counter's value the host holds (`pw:ping_auth:<name>`), 0 if absent.
fn counter(env: &Env, name: &str) -> u64 {
    env.emu
        .metric(&format!("pw:ping_auth:{name}"))
        .and_then(|m| m.number())
        .unwrap_or(0)
}

fn upstream_users(env: &Env) -> Vec<Vec<String>> {
    env.upstream
        .requests()
        .iter()
        .map(|r| req_header(r, "x-user"))
        .collect()
}

#[test]
fn hits_replay_the_decision_without_a_call_and_tokens_never_share_one() {
    let mut env = Env::new(allow_user, hook_off_with_cache(json!({"enabled": true})));
    for token in ["Bearer A", "Bearer A", "Bearer B", "Bearer A", "Bearer B"] {
        let resp = env.send(as_user(token));
        assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    }
    assert_eq!(
        env.pdp.calls("/sideband/request").len(),
        2,
        "one call per token"
    );
    let users = upstream_users(&env);
    assert_eq!(
        users,
        [
            ["Bearer A"],
            ["Bearer A"],
            ["Bearer B"],
            ["Bearer A"],
            ["Bearer B"]
        ]
        .map(|u| u.map(String::from).to_vec())
        .to_vec()
    );
    // A replayed request reaches the upstream byte for byte as the fresh one.
    let reqs = env.upstream.requests();
    let seen = |r: &Request| {
        let headers: Vec<_> = r
            .headers
            .iter()
            .filter(|(n, _)| !n.eq_ignore_ascii_case("x-kong-request-id"))
            .cloned()
            .collect();
        (r.method.clone(), r.target.clone(), headers, r.body.clone())
    };
    assert_eq!(seen(&reqs[0]), seen(&reqs[1]));
    assert_eq!(seen(&reqs[0]), seen(&reqs[3]));
    assert_eq!(counter(&env, "cache_hits_total"), 3);
    assert_eq!(counter(&env, "cache_misses_total"), 2);
    assert_eq!(counter(&env, "cache_stores_total"), 2);
    assert_eq!(counter(&env, "decisions_total_outcome=allow"), 5);
    assert_eq!(
        counter(&env, "sideband_calls_total_endpoint=request_result=ok"),
        2
    );
}

#[test]
fn entries_expire_after_their_ttl_and_the_least_recently_used_is_evicted() {
    let cache = json!({"enabled": true, "ttl_seconds": 1, "max_entries": 2});
    let mut env = Env::new(allow_user, hook_off_with_cache(cache));
    for token in ["Bearer A", "Bearer B", "Bearer A", "Bearer C"] {
        assert_eq!(env.send(as_user(token)).status, 200);
    }
    // C evicted B (A was used after B).
    assert_eq!(counter(&env, "cache_evictions_total"), 1);
    assert_eq!(env.pdp.calls("/sideband/request").len(), 3);
    env.send(as_user("Bearer A"));
    assert_eq!(
        env.pdp.calls("/sideband/request").len(),
        3,
        "A still cached"
    );
    env.send(as_user("Bearer B"));
    assert_eq!(env.pdp.calls("/sideband/request").len(), 4, "B was evicted");
    std::thread::sleep(Duration::from_millis(1100));
    env.send(as_user("Bearer A"));
    assert_eq!(env.pdp.calls("/sideband/request").len(), 5, "A expired");
}

#[test]
fn cache_control_from_the_policy_server_is_honoured() {
    let mut env = Env::new(
        |req: &Request| {
            let resp = allow_user(req);
            let token = req.body_str();
            if token.contains("no-store") {
                resp.with_header("Cache-Control", "no-store")
            } else if token.contains("private") {
                resp.with_header("Cache-Control", "private, max-age=60")
            } else if token.contains("short") {
                resp.with_header("Cache-Control", "max-age=1")
            } else {
                resp
            }
        },
        hook_off_with_cache(json!({"enabled": true, "ttl_seconds": 60})),
    );
    for token in ["no-store", "private"] {
        env.send(as_user(token));
        env.send(as_user(token));
    }
    assert_eq!(env.pdp.calls("/sideband/request").len(), 4, "never stored");
    env.send(as_user("short"));
    env.send(as_user("short"));
    assert_eq!(
        env.pdp.calls("/sideband/request").len(),
        5,
        "stored for 1 s"
    );
    std::thread::sleep(Duration::from_millis(1100));
    env.send(as_user("short"));
    assert_eq!(
        env.pdp.calls("/sideband/request").len(),
        6,
        "max-age=1 shortened the TTL"
    );
}

fn deny(_: &Request) -> Response {
    Response::json(
        200,
        &json!({"response": {"response_code": "403", "response_status": "FORBIDDEN",
            "headers": [{"content-type": "application/json"}, {"www-authenticate": "Bearer"}],
            "body": "{\"error\":\"no\"}"}}),
    )
}

#[test]
fn denies_are_cached_only_when_enabled_and_replayed_as_sent() {
    let mut env = Env::new(deny, hook_off_with_cache(json!({"enabled": true})));
    let first = env.send(as_user("Bearer A"));
    let second = env.send(as_user("Bearer A"));
    assert_eq!((first.status, second.status), (403, 403));
    assert_eq!(env.pdp.calls("/sideband/request").len(), 2);

    let mut env = Env::new(
        deny,
        hook_off_with_cache(json!({"enabled": true, "cache_denies": true})),
    );
    let first = env.send(as_user("Bearer A"));
    let second = env.send(as_user("Bearer A"));
    assert_eq!(env.pdp.calls("/sideband/request").len(), 1);
    assert_eq!(second.status, 403);
    assert_eq!(second.body, first.body);
    let strip_date = |r: &ping_auth_harness::emulator::ClientResponse| {
        r.headers
            .iter()
            .filter(|(n, _)| {
                ![
                    "date",
                    "x-kong-request-id",
                    "x-kong-upstream-latency",
                    "x-kong-proxy-latency",
                ]
                .iter()
                .any(|d| n.eq_ignore_ascii_case(d))
            })
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(strip_date(&second), strip_date(&first));
    assert_eq!(header(&second, "www-authenticate"), Some("Bearer"));
    assert!(env.upstream.requests().is_empty());
    assert_eq!(counter(&env, "decisions_total_outcome=deny"), 2);
}

#[test]
fn stale_if_error_serves_an_expired_allow_within_its_bound_and_logs_once() {
    // 0: allow; 1: 503; 2: slower than the call's timeout.
    let mode = Arc::new(AtomicU32::new(0));
    let m = mode.clone();
    let cache = json!({"enabled": true, "ttl_seconds": 1, "stale_if_error_seconds": 2});
    let mut extra = hook_off_with_cache(cache);
    extra["connection_timeout_ms"] = json!(300);
    let mut env = Env::new(
        move |req: &Request| match m.load(Ordering::SeqCst) {
            0 => allow_user(req),
            1 => Response::text(503, "down"),
            _ => allow_user(req).with_delay(Duration::from_millis(800)),
        },
        extra,
    );
    assert_eq!(env.send(as_user("Bearer A")).status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    mode.store(1, Ordering::SeqCst);
    for _ in 0..2 {
        let resp = env.send(as_user("Bearer A"));
        assert_eq!(resp.status, 200, "the stale allow");
    }
    mode.store(2, Ordering::SeqCst);
    assert_eq!(env.send(as_user("Bearer A")).status, 200, "timeout: stale");
    let served = env
        .logs()
        .iter()
        .filter(|l| l.starts_with("serving a cached allow"))
        .count();
    assert_eq!(served, 1, "logged once per entry: {:?}", env.logs());
    assert_eq!(counter(&env, "cache_stale_served_total"), 3);
    assert_eq!(
        upstream_users(&env),
        vec![vec!["Bearer A".to_string()]; 4],
        "the stale allow's directives applied"
    );
    // Another token has nothing cached: the failure's reply.
    mode.store(1, Ordering::SeqCst);
    assert_eq!(env.send(as_user("Bearer B")).status, 502);
    // Past expiry + 2 s: never served stale.
    std::thread::sleep(Duration::from_millis(2100));
    assert_eq!(env.send(as_user("Bearer A")).status, 502);
    assert_eq!(env.upstream.requests().len(), 4);
    assert!(!env.logs().iter().any(|l| l.contains("s3cr3t")));
}

#[test]
fn the_cache_is_not_used_with_the_response_hook() {
    let mut env = Env::new(allow_all, json!({"cache": {"enabled": true}}));
    for _ in 0..3 {
        assert_eq!(env.send(as_user("Bearer A")).status, 200);
    }
    assert_eq!(env.pdp.calls("/sideband/request").len(), 3);
    assert_eq!(env.pdp.calls("/sideband/response").len(), 3);
    assert!(env.log_contains("cache"), "{:?}", env.logs());
    assert_eq!(counter(&env, "cache_hits_total"), 0);
    assert_eq!(
        counter(&env, "sideband_calls_total_endpoint=response_result=ok"),
        3
    );
}

#[test]
fn requests_with_a_body_are_cached_only_when_the_body_is_keyed() {
    let body = br#"{"q":1}"#;
    let mut env = Env::new(allow_user, hook_off_with_cache(json!({"enabled": true})));
    for _ in 0..2 {
        let r = with_header(post("/things", body), "Authorization", "Bearer A");
        assert_eq!(env.send(r).status, 200);
    }
    assert_eq!(env.pdp.calls("/sideband/request").len(), 2);

    let cache = json!({"enabled": true, "key_body": true});
    let mut env = Env::new(allow_user, hook_off_with_cache(cache));
    for b in [&body[..], &body[..], br#"{"q":2}"#] {
        let r = with_header(post("/things", b), "Authorization", "Bearer A");
        assert_eq!(env.send(r).status, 200);
    }
    assert_eq!(
        env.pdp.calls("/sideband/request").len(),
        2,
        "same body, one call"
    );
    let bodies: Vec<Vec<u8>> = env
        .upstream
        .requests()
        .iter()
        .map(|r| r.body.clone())
        .collect();
    assert_eq!(bodies[1], body.to_vec());
    assert_eq!(bodies[2], br#"{"q":2}"#.to_vec());
}

#[test]
fn metrics_count_outcomes_calls_and_latency_and_kong_exports_them() {
    let mut env = Env::new(
        |req: &Request| {
            if req.body_str().contains("Bearer D") {
                deny(req)
            } else if req.body_str().contains("Bearer E") {
                Response::json(500, &json!({"message": "boom"}))
            } else {
                allow_user(req)
            }
        },
        hook_off_with_cache(json!({"enabled": true})),
    );
    for token in ["Bearer A", "Bearer A", "Bearer D", "Bearer E"] {
        env.send(as_user(token));
    }
    assert_eq!(counter(&env, "decisions_total_outcome=allow"), 2);
    assert_eq!(counter(&env, "decisions_total_outcome=deny"), 1);
    assert_eq!(counter(&env, "decisions_total_outcome=server_error"), 1);
    assert_eq!(
        counter(&env, "sideband_calls_total_endpoint=request_result=ok"),
        2
    );
    assert_eq!(
        counter(
            &env,
            "sideband_calls_total_endpoint=request_result=server_error"
        ),
        1
    );
    let latency = env
        .emu
        .metric("pw:ping_auth:sideband_latency_milliseconds_endpoint=request")
        .expect("latency histogram");
    let text = format!("{latency:?}");
    assert!(text.contains("Histogram"), "{text}");

    let meta = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schema/ping_auth.meta.json"),
    )
    .unwrap();
    let mut patterns = BTreeMap::new();
    patterns.insert(
        "ping_auth".to_string(),
        LabelPattern::from_meta_json(&meta).unwrap(),
    );
    let scrape = env.emu.prometheus_metrics(&patterns).unwrap();
    for line in [
        "# TYPE pw_ping_auth_decisions_total counter",
        "pw_ping_auth_decisions_total{outcome=\"allow\"} 2",
        "pw_ping_auth_decisions_total{outcome=\"server_error\"} 1",
        "pw_ping_auth_sideband_calls_total{endpoint=\"request\",result=\"ok\"} 2",
        "pw_ping_auth_cache_hits_total 1",
        "# TYPE pw_ping_auth_sideband_latency_milliseconds histogram",
        "pw_ping_auth_sideband_latency_milliseconds_count{endpoint=\"request\"} 3",
    ] {
        assert!(scrape.lines().any(|l| l == line), "{line} in\n{scrape}");
    }
    let _: Value = json!(null);
}
