//! What the fuzz targets run, and the properties they check.
//!
//! Each target in `fuzz_targets/` decodes the fuzzer's bytes and calls one
//! function here; a broken property is a panic, which libFuzzer reports as a
//! crash and saves as a reproducer. Every reproducer found so far is replayed by
//! `tests/fuzz_regressions.rs` in the main crate. See docs/fuzzing.md.
//!
//! The exchange is driven against the native mock host (`ping_auth::host::mock`)
//! the unit tests use: the same code that runs in the `.wasm`, at native speed.

pub mod wasm;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use ping_auth::config;
use ping_auth::exchange::{Exchange, Shared};
use ping_auth::host::mock::{capture_logs, logs, Effect, MockHost};
use ping_auth::host::{Action, Map};
use ping_auth::metrics::Metrics;
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;
use std::rc::Rc;

/// Whether `bytes` holds a punycode label (`xn--`, any case) while debug
/// assertions are on. idna 1.1.0 (through `url`) asserts on some such labels
/// (`debug_assert_ne!` in `uts46.rs`, `is_bidi`): a panic in this build, but
/// not in the shipped one, which has no debug assertions. The targets skip
/// them here; `a_punycode_host_that_trips_an_idna_debug_assertion_configures_without_a_trap`
/// (tests/failures.rs) runs the label through the shipped `.wasm`.
fn idna_debug_assertion_risk(bytes: &[u8]) -> bool {
    cfg!(debug_assertions) && bytes.windows(4).any(|w| w.eq_ignore_ascii_case(b"xn--"))
}

/// The shared secret of every configuration the exchange targets use: no log
/// line may ever contain it.
pub const SECRET: &str = "fuzz-Secret-9f8e7d";

/// Panics if any captured log line carries the shared secret.
fn assert_no_secret_logged() {
    for (_, line) in logs() {
        assert!(
            !line.contains(SECRET),
            "the secret reached a log line: {line}"
        );
    }
}

// ---------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------

/// `on_configure` input: never a panic; a refusal says why. The secret is
/// then swapped for a marker no other value contains, and neither the
/// announcement of an accepted configuration nor a refusal may show it.
pub fn configuration(bytes: &[u8]) {
    const MARKER: &str = "zQ7-secret-marker-Qz";
    if idna_debug_assertion_risk(bytes) {
        return;
    }
    capture_logs();
    match config::parse(bytes) {
        Ok(c) => {
            let _ = c.announcement();
        }
        Err(e) => assert!(!e.to_string().is_empty(), "a refusal must say why"),
    }
    // (libFuzzer learns compared constants: an input may carry the marker itself.)
    if String::from_utf8_lossy(bytes).contains(MARKER) {
        return;
    }
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    if !obj.get("shared_secret").is_some_and(Value::is_string) {
        return;
    }
    let mut rest = obj.clone();
    rest.remove("shared_secret");
    if Value::Object(rest).to_string().contains(MARKER) {
        return;
    }
    obj.insert("shared_secret".into(), Value::String(MARKER.into()));
    let text = Value::Object(obj).to_string();
    match config::parse(text.as_bytes()) {
        Ok(c) => {
            for (_, line) in c.announcement() {
                assert!(
                    !line.contains(MARKER),
                    "announcement shows the secret: {line}"
                );
            }
        }
        Err(e) => assert!(
            !e.to_string().contains(MARKER),
            "a refusal shows the secret: {e}"
        ),
    }
    for (_, line) in logs() {
        assert!(
            !line.contains(MARKER),
            "a log line shows the secret: {line}"
        );
    }
}

// ---------------------------------------------------------------------------
// A client request and scripted replies
// ---------------------------------------------------------------------------

const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT",
];

/// Properties the filter reads; the fuzzer picks which are set and to what.
const PROPERTIES: [&str; 12] = [
    "request.path",
    "request.query",
    "request.scheme",
    "request.protocol",
    "ngx.host",
    "ngx.server_port",
    "ngx.upstream_uri",
    "ngx.ssl_client_raw_cert",
    "kong.request.forwarded_scheme",
    "kong.request.forwarded_host",
    "kong.request.forwarded_port",
    "source.address",
];

/// The client side of one request.
#[derive(Arbitrary, Debug)]
pub struct Client {
    method: u8,
    /// Used instead of `method` when set (any bytes the host may pass on).
    raw_method: Option<String>,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    /// `Some`: the request announces a body (`Content-Length`) with these bytes.
    body: Option<Vec<u8>>,
    /// The body is announced but the host cannot hand it over (spooled to a file).
    body_unreadable: bool,
    properties: Vec<(u8, Vec<u8>)>,
}

impl Client {
    fn host(&self) -> MockHost {
        let method = match &self.raw_method {
            Some(m) => m.clone(),
            None => METHODS[usize::from(self.method) % METHODS.len()].to_string(),
        };
        let mut h = MockHost::request(&method, &self.path, &[]);
        let pairs = h.maps.entry(Map::RequestHeaders).or_default();
        for (n, v) in &self.headers {
            pairs.push((n.to_ascii_lowercase(), v.clone()));
        }
        if let Some(body) = &self.body {
            pairs.push(("content-length".into(), body.len().to_string().into_bytes()));
            if !self.body_unreadable {
                h.request_body = Some(body.clone());
            }
        }
        for (which, value) in &self.properties {
            let name = PROPERTIES[usize::from(*which) % PROPERTIES.len()];
            h.properties.insert(name.to_string(), value.clone());
        }
        h
    }
}

/// What the host reports for one finished dispatch.
#[derive(Arbitrary, Debug)]
pub struct Scripted {
    /// `None`: the call failed before a status (`:dispatch_status` below).
    status: Option<u16>,
    /// 0 = none sent, 1 = `ok`, otherwise a failure name.
    dispatch_status: u8,
    headers: Vec<(String, String)>,
    body: ScriptedBody,
    /// The size the host announces differs from the bytes it hands over.
    size_delta: i8,
}

/// A reply body: raw bytes, or the posted payload with a splice (most replies a
/// policy server sends are near-copies of what it got, and random bytes are
/// rarely JSON).
#[derive(Arbitrary, Debug, Clone)]
pub enum ScriptedBody {
    Raw(Vec<u8>),
    Echo {
        at: u16,
        cut: u8,
        insert: Vec<u8>,
    },
    /// The posted payload with one top-level member set to a JSON text.
    EchoMember {
        member: u8,
        json: String,
    },
}

const MEMBERS: [&str; 10] = [
    "response",
    "headers",
    "method",
    "url",
    "body",
    "state",
    "source_ip",
    "http_version",
    "client_certificate",
    "response_code",
];

impl ScriptedBody {
    /// The body, given what the filter posted.
    pub fn render(&self, posted: &[u8]) -> Vec<u8> {
        match self {
            ScriptedBody::Raw(b) => b.clone(),
            ScriptedBody::Echo { at, cut, insert } => {
                let at = usize::from(*at).min(posted.len());
                let end = (at + usize::from(*cut)).min(posted.len());
                let mut out = posted[..at].to_vec();
                out.extend_from_slice(insert);
                out.extend_from_slice(&posted[end..]);
                out
            }
            ScriptedBody::EchoMember { member, json } => {
                let name = MEMBERS[usize::from(*member) % MEMBERS.len()];
                let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(posted) else {
                    return posted.to_vec();
                };
                match serde_json::from_str::<Value>(json) {
                    Ok(v) => {
                        obj.insert(name.to_string(), v);
                        serde_json::to_vec(&obj).unwrap_or_default()
                    }
                    // Not JSON: spliced in as text, so the reply is malformed.
                    Err(_) => {
                        let text = Value::Object(obj).to_string();
                        format!("{{\"{name}\":{json},{}", text.get(1..).unwrap_or("")).into_bytes()
                    }
                }
            }
        }
    }
}

impl Scripted {
    fn body(&self, posted: &[u8]) -> Vec<u8> {
        self.body.render(posted)
    }

    fn dispatch_status(&self) -> Option<&'static str> {
        match self.dispatch_status % 8 {
            0 => None,
            1..=3 => Some("ok"),
            4 => Some("timeout"),
            5 => Some("broken connection"),
            6 => Some("tls handshake failure"),
            _ => Some("reader failure"),
        }
    }

    /// Installs this reply as the answer the mock host gives for the next call.
    fn install(&self, h: &mut MockHost, posted: &[u8]) -> (Vec<u8>, usize) {
        let body = self.body(posted);
        let mut pairs = Vec::new();
        if let Some(s) = self.status {
            pairs.push((":status".to_string(), s.to_string().into_bytes()));
        }
        if let Some(d) = self.dispatch_status() {
            pairs.push((":dispatch_status".to_string(), d.as_bytes().to_vec()));
        }
        for (n, v) in &self.headers {
            pairs.push((n.to_ascii_lowercase(), v.as_bytes().to_vec()));
        }
        h.maps.insert(Map::CallResponseHeaders, pairs);
        h.call_body = body.clone();
        let size = body
            .len()
            .saturating_add_signed(isize::from(self.size_delta));
        (body, size)
    }

    /// Whether a policy server's reply with these facts may be read as an
    /// allow: a completed call, a status below 400, a body that is a JSON
    /// object without a `response` (or with `"response": false`, as Lua
    /// reads it). Judged with serde_json's own parser, independently of the
    /// filter's reading.
    fn may_allow(&self, body: &[u8], size: usize) -> bool {
        self.status != Some(429) && self.readable(body, size).is_some_and(object_without_deny)
    }

    /// A completed deny: a JSON object whose `response` is an object.
    fn is_deny(&self, body: &[u8], size: usize) -> bool {
        self.readable(body, size).is_some_and(object_with_deny)
    }

    /// A completed `/sideband/response` reply that is a JSON object.
    fn is_valid_response_reply(&self, body: &[u8], size: usize) -> bool {
        self.readable(body, size)
            .is_some_and(|b| top_members(b).is_some())
    }

    /// The body the host hands over (`size` bytes of it) when the call
    /// completed with a status below 400; `None` otherwise.
    fn readable<'b>(&self, body: &'b [u8], size: usize) -> Option<&'b [u8]> {
        let completed = matches!(self.dispatch_status(), None | Some("ok"));
        let status_ok = self.status.is_some_and(|s| s < 400);
        (completed && status_ok).then(|| &body[..size.min(body.len())])
    }
}

/// One request through the exchange; see [`request_decision`] and [`response_hook`].
#[derive(Arbitrary, Debug)]
pub struct Story {
    client: Client,
    /// Answers for the dispatches in the order the filter makes them.
    replies: Vec<Scripted>,
    /// With the hook off: the upstream's response after an allow.
    upstream_status: u16,
    upstream_body: Vec<u8>,
}

/// How the request ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Resumed to the upstream (hook off).
    Forwarded,
    /// A local response with this status.
    Replied(u16),
    /// Still waiting: the story ran out of replies.
    Waiting,
}

fn sideband_path(call: &ping_auth::host::mock::Call) -> &str {
    call.header(":path").unwrap_or("")
}

/// Runs `story` through an exchange of `config_text` and checks that:
/// - the host is never both resumed and answered locally;
/// - the upstream is reached (a resume, or the hook's call to it) only after a
///   `/sideband/request` reply that may be read as an allow;
/// - every local response that is not the policy's own deny is a 4xx/5xx;
/// - every `/sideband/response` reply that is not a valid response gets a
///   failure status, not the upstream's;
/// - no log line carries the secret.
fn run(config_text: &str, story: &Story) -> Ending {
    capture_logs();
    let Ok(config) = config::parse(config_text.as_bytes()) else {
        panic!("the fuzz configuration must parse: {config_text}");
    };
    let shared = Rc::new(Shared::new(Some(&config), Metrics::default()));
    let mut x = Exchange::new(Some(Rc::new(config)), shared);
    let mut h = story.client.host();

    let mut action = x.on_request_headers(&mut h);
    if action == Action::Continue && h.sent().is_none() && !h.resumed() {
        if let Some(body) = &story.client.body {
            // The body arrives in one piece at the end of the stream.
            action = x.on_request_body(&mut h, body.len(), true);
        }
    }
    let _ = action;

    let mut replies = story.replies.iter();
    let mut answered = 0usize;
    let mut allowed = false;
    let mut deny_seen = false;
    loop {
        let calls: Vec<_> = h.dispatches().into_iter().cloned().collect();
        let Some(call) = calls.get(answered) else {
            break;
        };
        let Some(reply) = replies.next() else {
            return check_end(&h, allowed, deny_seen);
        };
        answered += 1;
        let path = sideband_path(call).to_string();
        let (body, size) = reply.install(&mut h, &call.body);
        let before = h.effects.len();
        // The mock numbers dispatches 1, 2, 3, ...
        let token = u32::try_from(answered).unwrap_or(u32::MAX);
        x.on_call_response(&mut h, token, size);
        let after: Vec<Effect> = h.effects[before..].to_vec();
        let went_upstream = after.iter().any(|e| match e {
            Effect::Resume => true,
            Effect::Dispatch(c) => {
                !sideband_path(c).ends_with("/sideband/request")
                    && !sideband_path(c).ends_with("/sideband/response")
            }
            _ => false,
        });
        if path.ends_with("/sideband/request") {
            if went_upstream {
                assert!(
                    reply.may_allow(&body, size),
                    "the upstream was reached after a reply that is not an allow: {:?}",
                    String::from_utf8_lossy(&body)
                );
                allowed = true;
            }
            if let Some(Effect::Send(_)) = after.iter().find(|e| matches!(e, Effect::Send(_))) {
                deny_seen = reply.is_deny(&body, size);
            }
        } else if path.ends_with("/sideband/response") {
            if let Some(Effect::Send(s)) = after.iter().find(|e| matches!(e, Effect::Send(_))) {
                if !reply.is_valid_response_reply(&body, size) {
                    assert!(
                        s.status >= 500,
                        "a malformed /sideband/response reply gave the client {}",
                        s.status
                    );
                }
            }
        }
    }
    if h.resumed() && h.sent().is_none() {
        // Hook off: the upstream answers through the host.
        let pairs = vec![
            (
                ":status".to_string(),
                story.upstream_status.to_string().into_bytes(),
            ),
            (
                "content-length".to_string(),
                story.upstream_body.len().to_string().into_bytes(),
            ),
        ];
        h.maps.insert(Map::ResponseHeaders, pairs);
        let _ = x.on_response_headers(&mut h);
        let _ = x.on_response_body(&mut h, story.upstream_body.len());
    }
    check_end(&h, allowed, deny_seen)
}

fn check_end(h: &MockHost, allowed: bool, deny_seen: bool) -> Ending {
    assert_no_secret_logged();
    let resumed = h.resumed();
    let sent = h.sent().map(|s| s.status);
    assert!(
        !(resumed && sent.is_some()),
        "the request was both resumed and answered"
    );
    if resumed {
        assert!(allowed, "resumed without an allow");
        return Ending::Forwarded;
    }
    match sent {
        Some(status) => {
            if !deny_seen && !allowed {
                assert!(
                    (400..600).contains(&status),
                    "a failure answered {status}, not an error status"
                );
            }
            Ending::Replied(status)
        }
        None => Ending::Waiting,
    }
}

/// The top-level members of a JSON object (the last of two names kept), each
/// unparsed: members nobody reads may be nested any depth.
pub fn top_members(body: &[u8]) -> Option<BTreeMap<String, Box<RawValue>>> {
    serde_json::from_slice(body).ok()
}

/// The oracle for an allow: a JSON object whose `response` is absent or
/// `false`. It is more lenient than the filter (which also refuses a name
/// given twice, and needs well-formed directives), never stricter.
pub fn object_without_deny(body: &[u8]) -> bool {
    top_members(body).is_some_and(|m| match m.get("response") {
        None => true,
        Some(raw) => raw.get().trim() == "false",
    })
}

/// A JSON object whose `response` is an object.
pub fn object_with_deny(body: &[u8]) -> bool {
    top_members(body).is_some_and(|m| {
        m.get("response")
            .is_some_and(|raw| matches!(serde_json::from_str(raw.get()), Ok(Value::Object(_))))
    })
}

fn exchange_config(extra: &str) -> String {
    format!(
        r#"{{"service_url":"https://pdp.example:8443/base","shared_secret":"{SECRET}","secret_header_name":"CLIENT-TOKEN"{extra}}}"#
    )
}

/// The `/sideband/request` reply → decision path, response hook off.
pub fn request_decision(story: &Story) -> Ending {
    run(&exchange_config(r#","enable_response_hook":false"#), story)
}

/// The response hook's path: the sideband request, the filter's call to the
/// upstream, the `/sideband/response` reply.
pub fn response_hook(story: &Story) -> Ending {
    run(
        &exchange_config(r#","enable_response_hook":true,"upstream_url":"http://backend:9000""#),
        story,
    )
}

// ---------------------------------------------------------------------------
// URL, query and path normalisation
// ---------------------------------------------------------------------------

/// The URL helpers: no panic; the normalisations are idempotent.
pub fn urls(bytes: &[u8]) {
    use ping_auth::protocol::request::{normalize_path, normalize_query};
    use ping_auth::url::{escape_path, parse_reply_url, parse_url, strip_port};

    if idna_debug_assertion_risk(bytes) {
        return;
    }
    let text = String::from_utf8_lossy(bytes);
    if let Ok(u) = parse_url(&text) {
        // A parsed service URL parses again to the same parts.
        let query = if u.query.is_empty() {
            String::new()
        } else {
            format!("?{}", u.query)
        };
        let again = format!("{}://{}{}{query}", u.scheme.as_str(), u.authority(), u.path);
        let Ok(v) = parse_url(&again) else {
            panic!("{again:?} (from {text:?}) does not parse again");
        };
        assert_eq!(u.authority(), v.authority(), "authority of {text:?}");
        assert_eq!(u.path, v.path, "path of {text:?}");
    }
    let _ = parse_reply_url(&text);
    let _ = strip_port(&text);

    let q = normalize_query(bytes);
    assert_eq!(
        normalize_query(q.as_bytes()),
        q,
        "normalize_query not idempotent"
    );
    // Kong's path normalisation decodes once, so `%2545` becomes `%45` and a
    // second pass would decode again: it is idempotent only without escapes.
    let p = normalize_path(bytes);
    if !bytes.contains(&b'%') {
        assert_eq!(normalize_path(&p), p, "normalize_path not idempotent");
    }
    if p.first() == Some(&b'/') {
        for bad in [&b"//"[..], b"/./", b"/../"] {
            assert!(
                !p.windows(bad.len()).any(|w| w == bad),
                "normalize_path left {:?} in {:?}",
                String::from_utf8_lossy(bad),
                String::from_utf8_lossy(&p)
            );
        }
    }
    let e = escape_path(&text);
    assert!(
        e.bytes().all(|b| b.is_ascii_graphic()),
        "escape_path left a byte that cannot go in a request line: {e:?}"
    );
}

// ---------------------------------------------------------------------------
// Client certificates
// ---------------------------------------------------------------------------

/// `ngx.ssl_client_raw_cert` → the `client_certificate` member: no panic; an
/// accepted certificate gives a JSON object with `kty`, `kid` and a one-element `x5c`.
pub fn client_certificate(bytes: &[u8]) {
    if let Ok(json) = ping_auth::cert::client_certificate_json(bytes) {
        let Ok(Value::Object(o)) = serde_json::from_str::<Value>(&json) else {
            panic!("not a JSON object: {json}");
        };
        assert!(o.get("kty").is_some_and(Value::is_string), "{json}");
        assert!(o.get("kid").is_some_and(Value::is_string), "{json}");
        assert!(
            matches!(o.get("x5c"), Some(Value::Array(a)) if a.len() == 1),
            "{json}"
        );
    }
}
