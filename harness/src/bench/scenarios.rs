//! The benchmark's scenarios: the client request, what the policy server and
//! the upstream answer, and the filter configuration.
//!
//! One policy server and one upstream serve every scenario: each scenario's
//! `service_url` is `http://127.0.0.1:<port>/<key>/` and its client paths
//! start with `/<key>/`, so the servers know which scenario a call belongs
//! to. The policy server records the last exchange per path so that the
//! native run can replay exactly what the filter received.

use crate::emulator::{BodyMode, ClientRequest, HttpVersion};
use crate::http::{Request, Response};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One benchmark scenario.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Path prefix and short column label.
    pub key: &'static str,
    pub title: &'static str,
    /// `enable_response_hook`.
    pub hook: bool,
    /// The decision cache, keyed on `Authorization` (the warm-up's first
    /// request fills it, so every timed request is a hit).
    pub cache: bool,
    /// The emulator's `client_body_buffer_size`.
    pub body_buffer: usize,
    pub request: ClientRequest,
    pub expect_status: u16,
}

pub const KIB: usize = 1024;
/// Kong's default `client_body_buffer_size`.
const DEFAULT_BODY_BUFFER: usize = 8 * KIB;
/// What an operator sets (`KONG_NGINX_HTTP_CLIENT_BODY_BUFFER_SIZE=128k`) to
/// authorise 64 KiB bodies.
pub const LARGE_BODY_BUFFER: usize = 128 * KIB;

/// The scenario whose median is the small-request budget.
pub const SMALL_GET: &str = "get10";
/// The scenario whose median is the large-body budget.
pub const POST_64K: &str = "post64k";
/// The response hook scenario (its upstream answers 64 KiB).
pub const HOOK_64K: &str = "hook64k";
/// The scenario whose policy changes headers, path and body.
pub const CHANGES: &str = "change";
pub const DENY: &str = "deny";
/// The small GET answered from the decision cache.
pub const CACHED: &str = "cached";

/// A fixed `Date` so that every upstream answer has the same bytes.
const DATE: &str = "Sat, 22 Nov 2025 11:00:00 GMT";

pub fn all() -> Vec<Scenario> {
    let post = |key: &'static str, size: usize| {
        let body = json_body(size);
        let mut r = request("POST", &format!("/{key}/api/orders"), ten_headers());
        r.headers
            .push(("Content-Type".into(), b"application/json".to_vec()));
        r.headers
            .push(("Content-Length".into(), body.len().to_string().into_bytes()));
        r.body = body;
        r
    };
    let sixty = {
        let mut h = ten_headers();
        for i in 0..50 {
            h.push((
                format!("X-Custom-Header-{i:02}"),
                format!("value-{i:02}-0123456789abcdef").into_bytes(),
            ));
        }
        request("GET", "/hdr60/api/items?limit=10&offset=20", h)
    };
    vec![
        Scenario {
            key: SMALL_GET,
            title: "GET, 10 headers",
            hook: false,
            cache: false,
            body_buffer: DEFAULT_BODY_BUFFER,
            request: request(
                "GET",
                "/get10/api/items?limit=10&offset=20&sort=name",
                ten_headers(),
            ),
            expect_status: 200,
        },
        Scenario {
            key: CACHED,
            title: "GET, 10 headers, cached allow",
            hook: false,
            cache: true,
            body_buffer: DEFAULT_BODY_BUFFER,
            request: request(
                "GET",
                "/cached/api/items?limit=10&offset=20&sort=name",
                ten_headers(),
            ),
            expect_status: 200,
        },
        Scenario {
            key: "post4k",
            title: "POST 4 KiB JSON",
            hook: false,
            cache: false,
            body_buffer: DEFAULT_BODY_BUFFER,
            request: post("post4k", 4 * KIB),
            expect_status: 200,
        },
        Scenario {
            key: POST_64K,
            title: "POST 64 KiB JSON (128k body buffer)",
            hook: false,
            cache: false,
            body_buffer: LARGE_BODY_BUFFER,
            request: post(POST_64K, 64 * KIB),
            expect_status: 200,
        },
        Scenario {
            key: "hdr60",
            title: "GET, 60 headers",
            hook: false,
            cache: false,
            body_buffer: DEFAULT_BODY_BUFFER,
            request: sixty,
            expect_status: 200,
        },
        Scenario {
            key: CHANGES,
            title: "allow + header/path/body changes (hook on)",
            hook: true,
            cache: false,
            body_buffer: DEFAULT_BODY_BUFFER,
            request: {
                let mut r = post(CHANGES, 512);
                r.target = format!("/{CHANGES}/api/orders?expand=items");
                r
            },
            expect_status: 200,
        },
        Scenario {
            key: DENY,
            title: "deny (403)",
            hook: false,
            cache: false,
            body_buffer: DEFAULT_BODY_BUFFER,
            request: request("GET", "/deny/api/admin", ten_headers()),
            expect_status: 403,
        },
        Scenario {
            key: HOOK_64K,
            title: "response hook, 64 KiB upstream body",
            hook: true,
            cache: false,
            body_buffer: DEFAULT_BODY_BUFFER,
            request: request("GET", "/hook64k/api/report", ten_headers()),
            expect_status: 200,
        },
    ]
}

/// The filter configuration of a scenario.
pub fn config(scenario: &Scenario, pdp_port: u16) -> Value {
    let mut config = json!({
        "service_url": format!("http://127.0.0.1:{pdp_port}/{}/", scenario.key),
        "shared_secret": "bench-s3cr3t",
        "secret_header_name": "CLIENT-TOKEN",
        "connection_timeout_ms": 5000,
        "enable_response_hook": scenario.hook,
    });
    if scenario.cache {
        config["cache"] = json!({"enabled": true, "key_headers": ["authorization"]});
    }
    config
}

fn request(method: &str, target: &str, headers: Vec<(String, Vec<u8>)>) -> ClientRequest {
    ClientRequest {
        method: method.into(),
        target: target.into(),
        version: HttpVersion::Http11,
        headers,
        body: Vec::new(),
        body_mode: BodyMode::ContentLength,
        client_addr: SocketAddr::from(([10, 0, 0, 5], 40000)),
        tls: false,
        server_port: 8000,
        client_cert_pem: None,
        connection: None,
    }
}

/// Ten typical browser/API-client headers.
fn ten_headers() -> Vec<(String, Vec<u8>)> {
    [
        ("Host", "api.example.com"),
        ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36"),
        ("Accept", "application/json"),
        ("Accept-Encoding", "gzip, deflate, br"),
        ("Accept-Language", "en-US,en;q=0.9"),
        ("Authorization", "Bearer eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJ1LTEyMzQ1Iiwic2NvcGUiOiJvcmRlcnM6cmVhZCBvcmRlcnM6d3JpdGUiLCJpYXQiOjE3MDAwMDAwMDB9.c2lnbmF0dXJlLXBsYWNlaG9sZGVy"),
        ("Cookie", "session=4f7c2a9e1b3d; theme=dark"),
        ("X-Request-Id", "6f1c0d2e-8a4b-4c3d-9e5f-1a2b3c4d5e6f"),
        ("X-Correlation-Id", "corr-0001-0002-0003"),
        ("Cache-Control", "no-cache"),
    ]
    .iter()
    .map(|(n, v)| (n.to_string(), v.as_bytes().to_vec()))
    .collect()
}

/// A JSON document of exactly `size` bytes (for `size` ≥ 64): an array of
/// small objects (with quotes to escape in the payload), padded to size.
pub fn json_body(size: usize) -> Vec<u8> {
    let mut out = String::from("{\"items\":[");
    let mut i = 0;
    loop {
        let item = format!(
            "{}{{\"id\":{i},\"sku\":\"SKU-{i:06}\",\"qty\":{},\"note\":\"fragile; keep \\\"upright\\\"\"}}",
            if i == 0 { "" } else { "," },
            i % 7 + 1
        );
        // Room for the closing `],"pad":""}` (11 bytes).
        if out.len() + item.len() + 11 > size {
            break;
        }
        out.push_str(&item);
        i += 1;
    }
    out.push_str("],\"pad\":\"");
    let pad = size.saturating_sub(out.len() + 2);
    out.extend(std::iter::repeat_n('x', pad));
    out.push_str("\"}");
    out.into_bytes()
}

/// The last request and reply seen on a path.
#[derive(Clone, Debug, Default)]
pub struct Exchange {
    pub request_body: Vec<u8>,
    pub reply_body: Vec<u8>,
}

/// Last exchange per path, shared with the policy server's thread.
#[derive(Clone, Default)]
pub struct Recorder {
    last: Arc<Mutex<HashMap<String, Exchange>>>,
}

impl Recorder {
    fn record(&self, path: &str, request_body: &[u8], reply_body: &[u8]) {
        let mut last = match self.last.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let e = last.entry(path.to_string()).or_default();
        e.request_body.clear();
        e.request_body.extend_from_slice(request_body);
        e.reply_body.clear();
        e.reply_body.extend_from_slice(reply_body);
    }

    /// The last `/sideband/<endpoint>` exchange of a scenario.
    pub fn get(&self, key: &str, endpoint: &str) -> Option<Exchange> {
        let last = match self.last.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        last.get(&format!("/{key}/sideband/{endpoint}")).cloned()
    }
}

/// The policy server: allow unchanged (the payload echoed byte for byte),
/// except for the `deny` and `change` scenarios; `/sideband/response` echoes
/// the upstream response.
pub fn policy(recorder: &Recorder, req: &Request) -> Response {
    let path = req.path();
    let reply = if path.ends_with("/sideband/response") {
        match req.json() {
            Ok(v) => json!({
                "response_code": v["response_code"],
                "response_status": v["response_status"],
                "headers": v["headers"],
                "body": v["body"],
            })
            .to_string()
            .into_bytes(),
            Err(_) => return Response::new(400),
        }
    } else if path.starts_with(&format!("/{DENY}/")) {
        deny_reply()
    } else if path.starts_with(&format!("/{CHANGES}/")) {
        match req.json() {
            Ok(v) => change_reply(v),
            Err(_) => return Response::new(400),
        }
    } else {
        req.body.clone()
    };
    recorder.record(path, &req.body, &reply);
    Response::new(200)
        .with_header("Content-Type", "application/json")
        .with_body(reply)
}

fn deny_reply() -> Vec<u8> {
    json!({"response": {
        "response_code": "403",
        "response_status": "FORBIDDEN",
        "headers": [
            {"content-type": "application/json"},
            {"www-authenticate": "Bearer error=\"insufficient_scope\""}
        ],
        "body": "{\"error\":\"forbidden\",\"message\":\"Access denied by policy\"}"
    }})
    .to_string()
    .into_bytes()
}

/// Removes `cookie`, changes `accept-language`, adds two headers, moves the
/// path to `/v2/`, replaces the body and adds a `state`.
fn change_reply(mut v: Value) -> Vec<u8> {
    if let Some(headers) = v.get_mut("headers").and_then(Value::as_array_mut) {
        headers.retain(|h| h.get("cookie").is_none());
        for h in headers.iter_mut() {
            if let Some(o) = h.as_object_mut() {
                if o.contains_key("accept-language") {
                    o.insert("accept-language".into(), json!("fr-FR"));
                }
            }
        }
        headers.push(json!({"x-user-id": "u-12345"}));
        headers.push(json!({"x-scopes": "orders:read orders:write"}));
    }
    if let Some(url) = v.get("url").and_then(Value::as_str) {
        let url = url.replace("/api/orders", "/api/v2/orders");
        v["url"] = json!(url);
    }
    v["body"] = json!(
        r#"{"order":{"id":"o-1","items":[{"sku":"SKU-000001","qty":1}]},"approved_by":"policy"}"#
    );
    v["state"] = json!({"user": "u-12345", "scopes": ["orders:read", "orders:write"]});
    v.to_string().into_bytes()
}

/// The upstream: answers each scenario (the first path segment) with
/// [`upstream_body`].
pub fn upstream(req: &Request) -> Response {
    let key = req.path().split('/').nth(1).unwrap_or("");
    upstream_response(upstream_body(key))
}

/// What the upstream answers a scenario: 64 KiB of JSON for the response
/// hook scenario, `{"ok":true}` otherwise.
pub fn upstream_body(key: &str) -> Vec<u8> {
    if key == HOOK_64K {
        json_body(64 * KIB)
    } else {
        b"{\"ok\":true}".to_vec()
    }
}

/// What the upstream sends (the server adds `Content-Length` and
/// `Connection: close`).
pub fn upstream_response(body: Vec<u8>) -> Response {
    Response::new(200)
        .with_header("Content-Type", "application/json")
        .with_header("Date", DATE)
        .with_header("Vary", "Accept-Encoding")
        .with_body(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_bodies_have_the_exact_size_and_parse() {
        for size in [512, 4 * KIB, 64 * KIB] {
            let body = json_body(size);
            assert_eq!(body.len(), size);
            assert!(serde_json::from_slice::<Value>(&body).is_ok());
        }
    }

    #[test]
    fn scenarios_have_distinct_keys_and_their_own_paths() {
        let all = all();
        let keys: std::collections::BTreeSet<_> = all.iter().map(|s| s.key).collect();
        assert_eq!(keys.len(), all.len());
        for s in &all {
            assert!(s.request.target.starts_with(&format!("/{}/", s.key)));
        }
    }
}
