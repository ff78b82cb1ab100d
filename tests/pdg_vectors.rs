//! Ping's pdg-sideband-test-environment vectors through the filter (the protocol
//! they exercise: docs/sideband-protocol.md#decisions and
//! docs/sideband-protocol.md#response-reply; the vectors are listed in
//! docs/policy-server.md, "The example policies"): the rules live in
//! `examples/pdg-vectors-policy.json`, served by the harness's policy server,
//! with the filter in the Kong-like host emulator and an upstream playing the
//! smart-hub API.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

use common::*;
use ping_auth_harness::emulator::{ClientRequest, ClientResponse, Emulator, HostOptions};
use ping_auth_harness::http::Response;
use ping_auth_harness::policy::{Policy, PolicyServer};
use ping_auth_harness::upstream::Upstream;
use serde_json::{json, Value};

const TOKEN: &str = r#"Bearer {"active":true,"sub":"7d9fc465-ad9e-4f32-a7b6-4d45ac1d5b9e"}"#;
const SUB: &str = "7d9fc465-ad9e-4f32-a7b6-4d45ac1d5b9e";

struct Hub {
    emu: Emulator,
    chain: ping_auth_harness::emulator::ChainId,
    pdp: PolicyServer,
    upstream: Upstream,
}

impl Hub {
    fn new(context_method: &str) -> Hub {
        let text = std::fs::read_to_string("examples/pdg-vectors-policy.json").unwrap();
        let mut v: Value = serde_json::from_str(&text).unwrap();
        v["request_context_method"] = context_method.into();
        let policy = Policy::from_json(&v.to_string()).unwrap();
        let pdp = PolicyServer::start(policy, "127.0.0.1:0", None).unwrap();
        let upstream = Upstream::start_with("127.0.0.1:0", None, |req| {
            let path = req.path().to_string();
            let json_resp = |v: Value| {
                Some(Response::json(200, &v).with_header("X-Powered-By", "SmartHub Server Supreme"))
            };
            if path.starts_with("/persons/") {
                return json_resp(json!({"id": "p-1", "name": "l33t haxor"}))
                    .map(|r| r.with_header("X-Banned-Users", SUB));
            }
            if path.starts_with("/controls/") {
                return json_resp(json!({"name": "power", "callsRemaining": 0}));
            }
            None
        })
        .unwrap();
        let cfg = json!({
            "service_url": format!("http://127.0.0.1:{}", pdp.addr().port()),
            "shared_secret": "5e96eaf6-251e-4555-9434-d1b224f05e99",
            "secret_header_name": "PDG-TOKEN",
        });
        let (emu, chain) = emulator(
            HostOptions::default(),
            service(upstream.addr().port()),
            route(),
            cfg.to_string().into_bytes(),
        );
        Hub {
            emu,
            chain,
            pdp,
            upstream,
        }
    }

    fn send(&mut self, r: ClientRequest) -> ClientResponse {
        let r = with_header(r, "Authorization", TOKEN);
        self.emu.send(self.chain, r)
    }
}

#[test]
fn vector1_known_app_gets_user_header_and_loses_app_id() {
    let mut hub = Hub::new("state");
    let resp = hub.send(with_header(get("/homes"), "X-App-Id", "PNG"));
    assert_eq!(resp.status, 200);
    let up = hub.upstream.last_request().unwrap();
    assert_eq!(req_header(&up, "sh-user"), [SUB]);
    assert!(up.header("x-app-id").is_none());
}

#[test]
fn vector2_x_powered_by_removed() {
    let mut hub = Hub::new("state");
    let resp = hub.send(get("/devices"));
    assert_eq!(resp.status, 200);
    assert!(header(&resp, "x-powered-by").is_none());
    assert!(!hub.pdp.received().is_empty());
}

#[test]
fn vector3_query_transformed() {
    let mut hub = Hub::new("state");
    assert_eq!(
        hub.send(get("/devices?name=sedan&operator=contains"))
            .status,
        200
    );
    let up = hub.upstream.last_request().unwrap();
    assert_eq!(up.target, "/devices?name=sedan&compare=contains");
}

#[test]
fn vector4_banned_user_is_403_in_state_and_request_modes() {
    for mode in ["state", "request"] {
        let mut hub = Hub::new(mode);
        let resp = hub.send(get("/persons/p-1"));
        assert_eq!(resp.status, 403, "{mode}");
        let v: Value = serde_json::from_slice(&resp.body).unwrap();
        assert!(v["message"].as_str().unwrap().contains("banned"), "{mode}");
        assert!(header(&resp, "x-banned-users").is_none());
    }
}

#[test]
fn vector5_audit_dropped_from_put_body() {
    let mut hub = Hub::new("state");
    let body = br#"{"name":"sedan","audit":{"by":"alice"}}"#;
    let mut r = post("/homes/h-1/devices", body);
    r.method = "PUT".into();
    assert_eq!(hub.send(r).status, 200);
    let up = hub.upstream.last_request().unwrap();
    let v: Value = serde_json::from_slice(&up.body).unwrap();
    assert_eq!(v, json!({"name": "sedan"}));
}

#[test]
fn vector6_exhausted_calls_is_402() {
    let mut hub = Hub::new("state");
    let mut r = post("/controls/c-1", br#"{"value":"on"}"#);
    r.method = "PATCH".into();
    let resp = hub.send(r);
    assert_eq!(resp.status, 402);
    let v: Value = serde_json::from_slice(&resp.body).unwrap();
    assert!(v["message"].as_str().unwrap().contains("limit"));
}
