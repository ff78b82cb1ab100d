//! Interpreting the `/sideband/request` reply (docs/sideband-protocol.md#decisions):
//! a `response` object is a deny; otherwise the reply is the request to
//! forward, and its differences from what was sent become [`Directives`].

use crate::failure::backoff::parse_retry_after;
use crate::failure::{message_and_id, Call, Failure};
use crate::http::{Header, Reply};
use crate::protocol::json;
use crate::protocol::reply::{self, member, Members};
use crate::protocol::request::ClientRequest;
use crate::url::{escape_path, parse_reply_url};
use serde_json::value::RawValue;
use serde_json::Value;
use std::time::SystemTime;

/// What the host reported for a finished dispatch.
#[derive(Debug, Clone, Copy)]
pub struct CallResult<'a> {
    /// `:status`; `None` when the call failed (the host sets `:dispatch_status`).
    pub status: Option<u16>,
    pub dispatch_status: Option<&'a str>,
    pub retry_after: Option<&'a str>,
    pub body: &'a [u8],
}

/// Whether the host's `:dispatch_status` says the call completed (`ok`, or
/// absent on hosts that do not send it). Anything else (`timeout`, `broken
/// connection`, ...) is a failed call even if a `:status` was read.
pub fn dispatch_ok(dispatch_status: Option<&str>) -> bool {
    dispatch_status.is_none_or(|d| d.trim().eq_ignore_ascii_case("ok"))
}

/// Steps common to both sideband replies, in the Lua plugin's order: transport
/// failure, 429, JSON, 4xx (413 relayed), 5xx. Returns the reply's members.
pub fn check_reply(
    call: Call,
    target: &str,
    r: CallResult<'_>,
    now: SystemTime,
) -> Result<Members, Failure> {
    let Some(status) = r.status.filter(|_| dispatch_ok(r.dispatch_status)) else {
        return Err(Failure::Unreachable {
            call,
            target: target.to_string(),
            detail: r
                .dispatch_status
                .unwrap_or("no :status in the response")
                .to_string(),
        });
    };
    if status == 429 {
        let secs = r
            .retry_after
            .and_then(|v| parse_retry_after(v, now))
            .unwrap_or(1);
        return Err(Failure::RateLimited {
            retry_after_secs: secs,
            from_provider: true,
        });
    }
    // Success replies are parsed once, into top-level members; the whole
    // reply becomes a `Value` only on the error paths.
    if status < 400 {
        match reply::parse_members(r.body) {
            Ok(members) => return Ok(members),
            Err(e @ reply::MembersError::Duplicate(_)) => {
                return Err(Failure::Malformed {
                    call,
                    what: e.to_string(),
                })
            }
            Err(_) => {}
        }
    }
    let value: Value = match serde_json::from_slice(r.body) {
        Ok(v) => v,
        Err(e) => {
            let error = if r.body.is_empty() {
                "empty body".to_string()
            } else {
                e.to_string()
            };
            return Err(Failure::NotJson {
                call,
                status,
                error,
            });
        }
    };
    if (400..500).contains(&status) {
        let (message, id) = message_and_id(&value);
        if status == 413 {
            return Err(Failure::TooLarge {
                call,
                body: r.body.to_vec(),
                message,
                id,
            });
        }
        return Err(Failure::Rejected {
            call,
            status,
            message,
            id,
        });
    }
    if status >= 500 {
        let (message, id) = message_and_id(&value);
        return Err(Failure::ServerError {
            call,
            status,
            message,
            id,
        });
    }
    Err(Failure::Malformed {
        call,
        what: "the reply is not a JSON object".into(),
    })
}

/// A change to the upstream request headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderOp {
    /// Remove every value of the header.
    Remove(String),
    /// Replace every value of the header with these (one line each).
    Set(String, Vec<String>),
}

/// The differences between the request the filter sent and the one the
/// policy provider wants forwarded, in the Lua plugin's order of application.
#[derive(Debug, Clone, Default)]
pub struct Directives {
    pub header_ops: Vec<HeaderOp>,
    pub method: Option<String>,
    /// New upstream `Host` header (`host:port`, as Lua sets it).
    pub host: Option<String>,
    /// New upstream path (escaped for the request line).
    pub path: Option<String>,
    /// New raw query; `Some("")` removes it.
    pub query: Option<String>,
    /// New request body; `Some(empty)` clears it.
    pub body: Option<Vec<u8>>,
    /// Changes that cannot be applied (scheme, source ip/port, certificate).
    pub warnings: Vec<String>,
    /// One line per applied change, for debug logging.
    pub notes: Vec<String>,
    /// The raw JSON of `state`, kept byte for byte for the response hook.
    pub state: Option<Box<RawValue>>,
}

impl Directives {
    /// Applies the directives to a header list (for the response hook's own
    /// upstream call and for tests): removals and replacements in place.
    pub fn apply_headers(&self, headers: &mut Vec<Header>) {
        for op in &self.header_ops {
            match op {
                HeaderOp::Remove(name) => headers.retain(|h| h.name != *name),
                HeaderOp::Set(name, values) => {
                    let at = headers.iter().position(|h| h.name == *name);
                    headers.retain(|h| h.name != *name);
                    let new = values
                        .iter()
                        .map(|v| Header::new(name, v.as_bytes().to_vec()));
                    match at {
                        Some(i) => {
                            let tail = headers.split_off(i.min(headers.len()));
                            headers.extend(new);
                            headers.extend(tail);
                        }
                        None => headers.extend(new),
                    }
                }
            }
        }
    }
}

/// The outcome of a well-formed `/sideband/request` reply.
#[derive(Debug, Clone)]
pub enum RequestOutcome {
    Deny(Reply),
    Allow(Directives),
}

/// Methods Kong's PDK accepts in `kong.service.request.set_method`.
const METHODS: &[&str] = &[
    "GET",
    "HEAD",
    "PUT",
    "POST",
    "DELETE",
    "OPTIONS",
    "MKCOL",
    "COPY",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "LOCK",
    "UNLOCK",
    "PATCH",
    "TRACE",
];

fn malformed(what: impl Into<String>) -> Failure {
    Failure::Malformed {
        call: Call::Request,
        what: what.into(),
    }
}

/// Interprets the members of a 1xx–3xx `/sideband/request` reply.
/// `body_literal`: the JSON string literal of the body as it was sent (see
/// `ClientRequest::payload_and_body_range`), to recognise an echo cheaply.
/// `notes`: describe each change in `Directives::notes` (debug logging).
pub fn interpret(
    members: &Members,
    sent: &ClientRequest,
    body_literal: Option<&str>,
    notes: bool,
) -> Result<RequestOutcome, Failure> {
    match member(members, "response").map_err(malformed)? {
        None | Some(Value::Bool(false)) => {}
        Some(Value::Object(resp)) => return deny(&resp).map(RequestOutcome::Deny),
        Some(other) => {
            return Err(malformed(format!(
                "'response' must be an object, got {other}"
            )))
        }
    }
    allow(members, sent, body_literal, notes).map(RequestOutcome::Allow)
}

fn deny(resp: &serde_json::Map<String, Value>) -> Result<Reply, Failure> {
    let status = reply::status_code(resp.get("response_code"))
        .map_err(|e| malformed(format!("deny: {e}")))?;
    let headers = match resp.get("headers") {
        Some(h) => reply::flatten_headers(h).map_err(|e| malformed(format!("deny: {e}")))?,
        None => return Err(malformed("deny: 'headers' is missing")),
    };
    let (body, was_json) =
        reply::response_body(resp.get("body")).map_err(|e| malformed(format!("deny: {e}")))?;
    Ok(reply::policy_reply(status, &headers, body, was_json))
}

fn allow(
    members: &Members,
    sent: &ClientRequest,
    body_literal: Option<&str>,
    notes: bool,
) -> Result<Directives, Failure> {
    let mut d = Directives::default();
    header_changes(&mut d, members, sent, notes)?;
    method_change(&mut d, members, sent, notes)?;
    url_change(&mut d, members, sent, notes)?;
    body_change(&mut d, members, sent, body_literal, notes)?;
    warned_fields(&mut d, members, sent)?;
    d.state = members
        .get("state")
        .filter(|raw| raw.get().trim() != "false")
        .cloned();
    Ok(d)
}

/// Headers: changed, removed by omission, added; Accept-Encoding always removed.
fn header_changes(
    d: &mut Directives,
    members: &Members,
    sent: &ClientRequest,
    notes: bool,
) -> Result<(), Failure> {
    // Headers (docs/sideband-protocol.md#header-changes): change, remove by omission,
    // add; Accept-Encoding always removed.
    let new_headers = match member(members, "headers").map_err(malformed)? {
        Some(h) => reply::flatten_headers(&h).map_err(malformed)?,
        None => {
            return Err(malformed(
                "'headers' is missing (echo the request's headers to keep them)",
            ))
        }
    };
    let mut original: Vec<(String, Vec<String>)> = Vec::new();
    for h in &sent.headers {
        let v = json::text(&h.value).into_owned();
        match original.iter_mut().find(|(n, _)| *n == h.name) {
            Some((_, values)) => values.push(v),
            None => original.push((h.name.clone(), vec![v])),
        }
    }
    for (name, old_values) in &original {
        match new_headers.iter().find(|(n, _)| n == name) {
            Some((_, new_values)) if new_values != old_values => {
                if name == "host" {
                    d.host = new_values.first().cloned();
                }
                if notes {
                    d.notes.push(format!(
                    "Updating \"{name}\" header values based on response from policy provider ({old_values:?} => {new_values:?})"
                ));
                }
                d.header_ops
                    .push(HeaderOp::Set(name.clone(), new_values.clone()));
            }
            Some(_) => {}
            None if name == "host" => d.warnings.push(
                "policy provider removed the host header; the upstream request keeps one".into(),
            ),
            None => {
                if notes {
                    d.notes.push(format!(
                        "Removing \"{name}\" header based on response from policy provider"
                    ));
                }
                d.header_ops.push(HeaderOp::Remove(name.clone()));
            }
        }
    }
    for (name, values) in &new_headers {
        if !original.iter().any(|(n, _)| n == name) {
            if name == "host" {
                d.host = values.first().cloned();
            }
            if notes {
                d.notes.push(format!(
                    "Adding \"{name}\" header based on response from policy provider ({values:?})"
                ));
            }
            d.header_ops
                .push(HeaderOp::Set(name.clone(), values.clone()));
        }
    }
    d.header_ops.retain(
        |op| !matches!(op, HeaderOp::Set(n, _) | HeaderOp::Remove(n) if n == "accept-encoding"),
    );
    d.header_ops
        .push(HeaderOp::Remove("accept-encoding".into()));

    Ok(())
}

/// The method, if the policy changed it to one Kong can send.
fn method_change(
    d: &mut Directives,
    members: &Members,
    sent: &ClientRequest,
    notes: bool,
) -> Result<(), Failure> {
    // Method (docs/sideband-protocol.md#method-change).
    match member(members, "method").map_err(malformed)? {
        Some(Value::String(m)) if m == sent.method => {}
        Some(Value::String(m)) if METHODS.contains(&m.as_str()) => {
            if notes {
                d.notes.push(format!(
                "Updating request method based on response from policy provider (\"{}\" => \"{m}\")",
                sent.method
            ));
            }
            d.method = Some(m);
        }
        Some(Value::String(m)) => {
            return Err(malformed(format!(
                "'method' \"{m}\" is not an upper-case HTTP method Kong can send"
            )))
        }
        Some(other) => return Err(malformed(format!("'method' must be a string, got {other}"))),
        None => {
            return Err(malformed(
                "'method' is missing (echo the request's method to keep it)",
            ))
        }
    }

    Ok(())
}

/// The URL: host and port become the Host header, then path and query; a
/// scheme change is only warned about.
fn url_change(
    d: &mut Directives,
    members: &Members,
    sent: &ClientRequest,
    notes: bool,
) -> Result<(), Failure> {
    // URL (docs/sideband-protocol.md#url-change): host/port → Host header, path,
    // query; scheme only warned.
    let sent_url = json::text(&sent.url()).into_owned();
    match member(members, "url").map_err(malformed)? {
        Some(Value::String(u)) if u == sent_url => {}
        Some(Value::String(u)) => {
            let new = parse_reply_url(&u)
                .ok_or_else(|| malformed(format!("'url' cannot be parsed: {u}")))?;
            let old = parse_reply_url(&sent_url)
                .ok_or_else(|| malformed("the sent url cannot be parsed"))?;
            if new.host != old.host || new.port != old.port {
                let host = format!("{}:{}", new.host, new.port);
                if notes {
                    d.notes.push(format!(
                    "Updating URL host based on response from policy provider (\"{sent_url}\" => \"{u}\")"
                ));
                }
                d.host = Some(host);
            }
            if new.path != old.path {
                if notes {
                    d.notes.push(format!(
                    "Updating URL path based on response from policy provider (\"{sent_url}\" => \"{u}\")"
                ));
                }
                d.path = Some(escape_path(&new.path));
            }
            if new.query != old.query {
                if notes {
                    d.notes.push(format!(
                    "Updating URL query based on response from policy provider (\"{}\" => \"{}\")",
                    old.query, new.query
                ));
                }
                d.query = Some(new.query.clone());
            }
            if new.scheme != old.scheme {
                d.warnings.push(unsupported(&old.scheme, &new.scheme));
            }
        }
        Some(other) => return Err(malformed(format!("'url' must be a string, got {other}"))),
        None => {
            return Err(malformed(
                "'url' is missing (echo the request's url to keep it)",
            ))
        }
    }

    Ok(())
}

/// The body: an echo keeps it; omission clears a non-empty body.
fn body_change(
    d: &mut Directives,
    members: &Members,
    sent: &ClientRequest,
    body_literal: Option<&str>,
    notes: bool,
) -> Result<(), Failure> {
    // Body (docs/sideband-protocol.md#body-change): an echo keeps it; omission clears
    // a non-empty body.
    let echoed =
        matches!((members.get("body"), body_literal), (Some(raw), Some(lit)) if raw.get() == lit);
    let sent_body = sent.body.as_deref().map(json::text);
    let new_body = if echoed {
        None
    } else {
        member(members, "body").map_err(malformed)?
    };
    match (new_body, sent_body) {
        _ if echoed => {}
        (None, None) => {}
        (None, Some(old)) if old.is_empty() => {}
        (None, Some(old)) => {
            if notes {
                d.notes.push(format!(
                    "Clearing body based on response from policy provider (\"{old}\" => \"\")"
                ));
            }
            d.body = Some(Vec::new());
        }
        (Some(Value::String(new)), old) if old.as_deref() == Some(new.as_str()) => {}
        (Some(Value::String(new)), old) => {
            if notes {
                d.notes.push(format!(
                    "Updating body based on response from policy provider (\"{}\" => \"{new}\")",
                    old.unwrap_or_default()
                ));
            }
            d.body = Some(new.into_bytes());
        }
        (Some(other), _) => return Err(malformed(format!("'body' must be a string, got {other}"))),
    }

    Ok(())
}

/// Fields that cannot be changed on this path: a warning each.
fn warned_fields(
    d: &mut Directives,
    members: &Members,
    sent: &ClientRequest,
) -> Result<(), Failure> {
    // Fields that cannot be changed: warn only
    // (docs/sideband-protocol.md#fields-only-warned-about).
    let as_text = |v: Option<Value>| match v {
        Some(Value::String(s)) => s,
        Some(Value::Number(n)) => n.to_string(),
        Some(other) => other.to_string(),
        None => "nil".into(),
    };
    let ip = as_text(member(members, "source_ip").map_err(malformed)?);
    if ip != sent.source_ip {
        d.warnings.push(unsupported(&sent.source_ip, &ip));
    }
    let port = as_text(member(members, "source_port").map_err(malformed)?);
    if port != sent.source_port {
        d.warnings.push(unsupported(&sent.source_port, &port));
    }
    let sent_cert: Option<Value> = sent
        .client_certificate
        .as_deref()
        .and_then(|c| serde_json::from_str(c).ok());
    let new_cert = member(members, "client_certificate").map_err(malformed)?;
    if sent_cert != new_cert {
        d.warnings.push(unsupported(
            if sent_cert.is_some() {
                "client_certificate"
            } else {
                "nil"
            },
            if new_cert.is_some() {
                "client_certificate"
            } else {
                "nil"
            },
        ));
    }
    Ok(())
}

fn unsupported(old: &str, new: &str) -> String {
    format!("Warning: policy provider attempted to modify request field that's not supported. (\"{old}\" => \"{new}\")")
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_call_the_host_says_failed_is_unreachable_even_with_a_status() {
        let r = CallResult {
            status: Some(200),
            dispatch_status: Some("timeout"),
            retry_after: None,
            body: b"{\"method\":\"GET\"",
        };
        let e = check_reply(Call::Request, "pdp:443", r, SystemTime::UNIX_EPOCH).unwrap_err();
        assert_eq!(
            e,
            Failure::Unreachable {
                call: Call::Request,
                target: "pdp:443".into(),
                detail: "timeout".into()
            }
        );
        assert_eq!(e.reply().status, 502);
        assert!(
            dispatch_ok(None) && dispatch_ok(Some("ok")) && !dispatch_ok(Some("broken connection"))
        );
    }
    use super::*;
    use crate::failure::Failure;

    fn sent() -> ClientRequest {
        ClientRequest {
            source_ip: "10.0.0.5".into(),
            source_port: "40000".into(),
            method: "POST".into(),
            scheme: "http".into(),
            host: "kong".into(),
            port: "8000".into(),
            path: b"/a/b".to_vec(),
            raw_query: b"x=1".to_vec(),
            headers: vec![
                Header::new("host", "kong:8000"),
                Header::new("x-m", "1"),
                Header::new("x-m", "2"),
                Header::new("authorization", "Bearer t"),
                Header::new("accept-encoding", "gzip"),
            ],
            body: Some(b"{\"a\":1}".to_vec()),
            http_version: "1.1".into(),
            client_certificate: None,
        }
    }

    fn echo() -> Value {
        serde_json::json!({
            "source_ip": "10.0.0.5", "source_port": "40000", "method": "POST",
            "url": "http://kong:8000/a/b?x=1", "body": "{\"a\":1}",
            "headers": [{"host":"kong:8000"},{"x-m":"1"},{"x-m":"2"},{"authorization":"Bearer t"},{"accept-encoding":"gzip"}],
            "http_version": "1.1"
        })
    }

    fn run(v: &Value) -> Result<RequestOutcome, Failure> {
        let members = reply::parse_members(v.to_string().as_bytes()).unwrap();
        interpret(&members, &sent(), None, true)
    }

    fn allow(v: &Value) -> Directives {
        match run(v).unwrap() {
            RequestOutcome::Allow(d) => d,
            other => panic!("expected allow, got {other:?}"),
        }
    }

    #[test]
    fn echo_changes_nothing_but_accept_encoding() {
        let d = allow(&echo());
        assert_eq!(
            (&d.method, &d.host, &d.path, &d.query, &d.body),
            (&None, &None, &None, &None, &None)
        );
        assert_eq!(
            d.header_ops,
            vec![HeaderOp::Remove("accept-encoding".into())]
        );
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn header_add_remove_reorder() {
        let mut v = echo();
        v["headers"] =
            serde_json::json!([{"host":"kong:8000"},{"X-M":"2"},{"x-m":"1"},{"x-user":"alice"}]);
        let d = allow(&v);
        assert!(d
            .header_ops
            .contains(&HeaderOp::Set("x-m".into(), vec!["2".into(), "1".into()])));
        assert!(d
            .header_ops
            .contains(&HeaderOp::Remove("authorization".into())));
        assert!(d
            .header_ops
            .contains(&HeaderOp::Set("x-user".into(), vec!["alice".into()])));
        assert_eq!(
            d.header_ops.last(),
            Some(&HeaderOp::Remove("accept-encoding".into()))
        );
    }

    #[test]
    fn method_url_body() {
        let mut v = echo();
        v["method"] = "PUT".into();
        v["url"] = "https://other:8443/v2/x?y=2".into();
        v["body"] = "new".into();
        let d = allow(&v);
        assert_eq!(d.method.as_deref(), Some("PUT"));
        assert_eq!(d.host.as_deref(), Some("other:8443"));
        assert_eq!(d.path.as_deref(), Some("/v2/x"));
        assert_eq!(d.query.as_deref(), Some("y=2"));
        assert_eq!(d.body.as_deref(), Some(&b"new"[..]));
        assert_eq!(
            d.warnings.len(),
            1,
            "scheme change is warned: {:?}",
            d.warnings
        );

        let mut v = echo();
        v["url"] = "http://kong:8000/a/b".into();
        v.as_object_mut().unwrap().remove("body");
        let d = allow(&v);
        assert_eq!(d.query.as_deref(), Some(""));
        assert_eq!(d.body.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn malformed_replies_fail_closed() {
        for (field, value) in [
            ("method", Value::from("put")),
            ("method", Value::Null),
            ("body", Value::Null),
            ("headers", Value::Null),
            ("url", Value::from(3)),
            ("response", Value::from("no")),
        ] {
            let mut v = echo();
            v[field] = value;
            assert!(matches!(run(&v), Err(Failure::Malformed { .. })), "{field}");
        }
        let mut v = echo();
        v.as_object_mut().unwrap().remove("headers");
        assert!(matches!(run(&v), Err(Failure::Malformed { .. })));
    }

    /// The members of `text` checked as a 200 reply to `/sideband/request`.
    fn checked_200(text: &str) -> Result<RequestOutcome, Failure> {
        let result = CallResult {
            status: Some(200),
            dispatch_status: Some("ok"),
            retry_after: None,
            body: text.as_bytes(),
        };
        let members = check_reply(Call::Request, "pdp:1", result, SystemTime::UNIX_EPOCH)?;
        interpret(&members, &sent(), None, false)
    }

    #[test]
    fn replies_the_filter_could_misread_fail_closed() {
        // Found by the fault matrix: serde_json keeps the last of two members
        // of one name, and a value it cannot read was taken as absent; both
        // let a deny through as an allow.
        let echo = echo().to_string();
        let body = echo.strip_suffix('}').unwrap();
        let deny = r#"{"response_code":403,"headers":[]}"#;
        for (case, text) in [
            (
                "duplicate response",
                format!(r#"{body},"response":{deny},"response":false}}"#),
            ),
            (
                "duplicate headers",
                format!(r#"{body},"headers":[{{"x-injected":"1"}}]}}"#),
            ),
            (
                "a number a double cannot hold",
                format!(r#"{body},"response":{{"response_code":1e400,"headers":[]}}}}"#),
            ),
            (
                "nesting deeper than 128",
                format!(
                    r#"{body},"response":{}{deny}{}}}"#,
                    "[".repeat(200),
                    "]".repeat(200)
                ),
            ),
        ] {
            match checked_200(&text) {
                Err(Failure::Malformed { what, .. }) => {
                    assert!(!what.is_empty(), "{case}");
                }
                other => panic!("{case}: {other:?}"),
            }
        }
        // A member the filter does not read may be anything JSON.
        let deep = format!(
            r#"{body},"extra":{}0{}}}"#,
            "[".repeat(1000),
            "]".repeat(1000)
        );
        assert!(matches!(checked_200(&deep), Ok(RequestOutcome::Allow(_))));
    }

    #[test]
    fn deny_and_state() {
        let v = serde_json::json!({"response": {"response_code": "403", "headers": [{"Content-Type":"text/plain"},{"set-cookie":"a=1"},{"set-cookie":"b=2"}], "body": "no"}});
        match run(&v).unwrap() {
            RequestOutcome::Deny(r) => {
                assert_eq!(r.status, 403);
                assert_eq!(r.body, b"no");
                assert_eq!(
                    r.headers.iter().filter(|(n, _)| n == "set-cookie").count(),
                    2
                );
            }
            other => panic!("{other:?}"),
        }
        let mut v = echo();
        v["response"] = false.into();
        v["state"] = "PLACEHOLDER".into();
        let text = v
            .to_string()
            .replace("\"PLACEHOLDER\"", r#"{"k": [1, 2.50, "\/"]}"#);
        let members = reply::parse_members(text.as_bytes()).unwrap();
        match interpret(&members, &sent(), None, true).unwrap() {
            RequestOutcome::Allow(d) => {
                assert_eq!(
                    d.state.map(|s| s.get().to_string()).as_deref(),
                    Some(r#"{"k": [1, 2.50, "\/"]}"#)
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn body_echo_recognised_from_the_sent_literal() {
        let sent_payload = sent().payload().unwrap();
        let payload = sent_payload.text();
        let literal = sent_payload.body_literal();
        assert_eq!(literal, Some(r#""{\"a\":1}""#));
        let members = reply::parse_members(payload.as_bytes()).unwrap();
        match interpret(&members, &sent(), literal, false).unwrap() {
            RequestOutcome::Allow(d) => assert_eq!(d.body, None),
            other => panic!("{other:?}"),
        }
        let changed = payload.replace(r#""{\"a\":1}""#, r#""{\"a\":2}""#);
        let members = reply::parse_members(changed.as_bytes()).unwrap();
        match interpret(&members, &sent(), literal, false).unwrap() {
            RequestOutcome::Allow(d) => assert_eq!(d.body.as_deref(), Some(&b"{\"a\":2}"[..])),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn certificate_changes_warn_and_echo_does_not() {
        let mut with_cert = sent();
        with_cert.client_certificate = Some(r#"{"kty":"EC","crv":"P-256","x":"a","y":"b"}"#.into());
        let run_with = |v: &Value| {
            let members = reply::parse_members(v.to_string().as_bytes()).unwrap();
            match interpret(&members, &with_cert, None, false).unwrap() {
                RequestOutcome::Allow(d) => d,
                other => panic!("{other:?}"),
            }
        };
        let mut v = echo();
        v["client_certificate"] = serde_json::json!({"y":"b","x":"a","crv":"P-256","kty":"EC"});
        assert!(
            run_with(&v).warnings.is_empty(),
            "an echo (any key order) is not a change"
        );
        v["client_certificate"]["x"] = "changed".into();
        let d = run_with(&v);
        assert_eq!(d.warnings.len(), 1);
        assert!(d.warnings[0].contains("not supported"));
        v.as_object_mut().unwrap().remove("client_certificate");
        assert!(run_with(&v).warnings[0].contains("(\"client_certificate\" => \"nil\")"));
    }

    #[test]
    fn source_fields_warn() {
        let mut v = echo();
        v.as_object_mut().unwrap().remove("source_ip");
        v["source_port"] = 40000.into();
        let d = allow(&v);
        assert_eq!(d.warnings.len(), 1);
        assert!(d.warnings[0].contains("(\"10.0.0.5\" => \"nil\")"));
    }

    #[test]
    fn status_classification() {
        let now = SystemTime::UNIX_EPOCH;
        let call = |status: Option<u16>, body: &[u8]| {
            check_reply(
                Call::Request,
                "pdp:1",
                CallResult {
                    status,
                    dispatch_status: Some(if status.is_some() { "ok" } else { "timeout" }),
                    retry_after: None,
                    body,
                },
                now,
            )
        };
        assert!(matches!(call(None, b""), Err(Failure::Unreachable { .. })));
        assert!(matches!(call(Some(200), b""), Err(Failure::NotJson { .. })));
        assert!(matches!(
            call(Some(401), b"{\"message\":\"m\"}"),
            Err(Failure::Rejected { status: 401, .. })
        ));
        assert!(matches!(
            call(Some(413), b"{}"),
            Err(Failure::TooLarge { .. })
        ));
        assert!(matches!(
            call(Some(413), b"<html>"),
            Err(Failure::NotJson { .. })
        ));
        assert!(matches!(
            call(Some(503), b"{}"),
            Err(Failure::ServerError { .. })
        ));
        assert!(matches!(
            call(Some(429), b"x"),
            Err(Failure::RateLimited {
                retry_after_secs: 1,
                ..
            })
        ));
        assert!(call(Some(200), b"{}").is_ok());
    }
}
