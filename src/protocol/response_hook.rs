//! The response hook (docs/sideband-protocol.md#response-hook), host-agnostic:
//! from the upstream response and the request context to the
//! `/sideband/response` payload, and from the policy's reply to the client
//! response.
//!
//! On Kong's Wasm host the upstream response is obtained by the filter's own
//! call (see `upstream`), but nothing here depends on how it was obtained, so
//! a host that allows dispatch in response phases can reuse it as is.

use crate::failure::{Call, Failure};
use crate::http::{Header, Reply};
use crate::protocol::decision::Directives;
use crate::protocol::json;
use crate::protocol::reply::{self, member, Members};
use crate::protocol::request::{self, ClientRequest, Headers, Text, MAX_HEADERS};
use serde::Serialize;
use serde_json::Value;

/// An upstream response, as received.
#[derive(Debug, Clone, Default)]
pub struct UpstreamResponse {
    pub status: u16,
    /// Lower-cased names in received order.
    pub headers: Vec<Header>,
    pub body: Vec<u8>,
}

impl UpstreamResponse {
    /// The response as the client would get it without the filter: its
    /// status, headers (the host sets the framing and consumes hop-by-hop
    /// headers) and body.
    pub fn unchanged(&self) -> Reply {
        Reply {
            status: self.status,
            headers: self
                .headers
                .iter()
                .filter(|h| {
                    !is_hop_by_hop(&h.name)
                        && !crate::http::FRAMING_HEADERS.contains(&h.name.as_str())
                })
                .map(|h| (h.name.clone(), json::text(&h.value).into_owned()))
                .collect(),
            body: self.body.clone(),
        }
    }
}

/// Hop-by-hop headers: nginx consumes them, so the Lua plugin never saw them
/// in `kong.response.get_headers()`.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Upstream headers the Lua plugin keeps when the policy does not list them
/// (`content-length` is recomputed by the host, `connection` is hop-by-hop).
const KEPT_UPSTREAM: &[&str] = &["date", "vary"];

/// The request context sent with the response: the `state` the policy gave,
/// or the original `/sideband/request` payload.
#[derive(Debug, Clone)]
pub enum Context<'a> {
    State(&'a str),
    Request(&'a str),
}

/// The Lua plugin's fixed `response_status` table; every other code is "".
pub fn status_text(code: u16) -> &'static str {
    match code {
        200 => "OK",
        400 => "BAD REQUEST",
        401 => "UNAUTHORIZED",
        404 => "NOT FOUND",
        413 => "PAYLOAD TOO LARGE",
        429 => "TOO MANY REQUESTS",
        500 => "INTERNAL SERVER ERROR",
        503 => "SERVICE UNAVAILABLE",
        _ => "",
    }
}

/// The JSON body of `POST /sideband/response`
/// (docs/sideband-protocol.md#response-payload). `method` is the method
/// after any policy change and `url` the client URL with the query after any
/// policy change, as the Lua plugin reports them.
pub fn payload(
    method: &str,
    url: &[u8],
    upstream: &UpstreamResponse,
    http_version: &str,
    context: Context<'_>,
) -> Result<String, String> {
    let headers: Vec<Header> = upstream
        .headers
        .iter()
        .filter(|h| !is_hop_by_hop(&h.name) && !h.name.starts_with(':'))
        .take(MAX_HEADERS)
        .cloned()
        .collect();
    let fields = ResponseFields {
        method,
        url: Text(url),
        body: Text(&upstream.body),
        response_code: upstream.status.to_string(),
        response_status: status_text(upstream.status),
        headers: Headers(&headers),
        http_version,
    };
    let mut out = Vec::with_capacity(512 + upstream.body.len() * 2);
    serde_json::to_writer(&mut out, &fields).map_err(|e| e.to_string())?;
    // `state` or `request` is JSON already: its text is the last member.
    match context {
        Context::State(raw) => json::append_raw_member(&mut out, "state", raw),
        Context::Request(raw) => json::append_raw_member(&mut out, "request", raw),
    }
    String::from_utf8(out).map_err(|e| e.to_string())
}

/// [`payload`] for a request the policy allowed with `d`: the method and
/// query after its changes, and its `state`, else the request payload sent.
pub fn payload_for(
    req: &ClientRequest,
    d: &Directives,
    upstream: &UpstreamResponse,
    request_payload: &str,
) -> Result<String, String> {
    let method = d.method.as_deref().unwrap_or(&req.method);
    let query = match &d.query {
        Some(q) => request::normalize_query(q.as_bytes()),
        None => request::normalize_query(&req.raw_query),
    };
    let url = request::url_bytes(&req.scheme, &req.host, &req.port, &req.path, &query);
    let context = match &d.state {
        Some(raw) => Context::State(raw.get()),
        None => Context::Request(request_payload),
    };
    payload(method, &url, upstream, &req.http_version, context)
}

/// The payload's members in the Lua plugin's order (then `state` or `request`).
#[derive(Serialize)]
struct ResponseFields<'a> {
    method: &'a str,
    url: Text<'a>,
    body: Text<'a>,
    response_code: String,
    response_status: &'static str,
    headers: Headers<'a>,
    http_version: &'a str,
}

fn malformed(what: impl Into<String>) -> Failure {
    Failure::Malformed {
        call: Call::Response,
        what: what.into(),
    }
}

/// The client response from a well-formed `/sideband/response` reply
/// (docs/sideband-protocol.md#response-reply):
/// the policy's status, headers and body; upstream headers the policy did not
/// list are dropped, except `date` and `vary`.
pub fn client_response(members: &Members, upstream: &UpstreamResponse) -> Result<Reply, Failure> {
    let status = reply::status_code(
        member(members, "response_code")
            .map_err(malformed)?
            .as_ref(),
    )
    .map_err(malformed)?;
    let headers = match member(members, "headers").map_err(malformed)? {
        Some(h) => reply::flatten_headers(&h).map_err(malformed)?,
        None => return Err(malformed("'headers' is missing")),
    };
    let body = member(members, "body").map_err(malformed)?;
    if matches!(body, Some(Value::Null)) {
        return Err(malformed("'body' is null"));
    }
    let (body, was_json) = reply::response_body(body.as_ref()).map_err(malformed)?;
    let mut out = reply::policy_reply(status, &headers, body, was_json);
    for h in &upstream.headers {
        if KEPT_UPSTREAM.contains(&h.name.as_str()) && !headers.iter().any(|(n, _)| *n == h.name) {
            out.headers
                .push((h.name.clone(), json::text(&h.value).into_owned()));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream() -> UpstreamResponse {
        UpstreamResponse {
            status: 200,
            headers: vec![
                Header::new("Content-Type", "application/json"),
                Header::new("X-Powered-By", "SmartHub"),
                Header::new("Date", "Mon, 07 Dec 2020 19:35:37 GMT"),
                Header::new("Vary", "Accept"),
                Header::new("Set-Cookie", "s=1"),
                Header::new("Transfer-Encoding", "chunked"),
            ],
            body: br#"{"a":1}"#.to_vec(),
        }
    }

    #[test]
    fn payload_fields() {
        let p = payload(
            "GET",
            b"http://k:8000/x?y=1",
            &upstream(),
            "1.1",
            Context::State("\"S1\""),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["response_code"], "200");
        assert_eq!(v["response_status"], "OK");
        assert_eq!(v["body"], "{\"a\":1}");
        assert_eq!(v["state"], "S1");
        assert!(v.get("request").is_none());
        let names: Vec<String> = v["headers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o.as_object().unwrap().keys().next().unwrap().clone())
            .collect();
        assert_eq!(
            names,
            ["content-type", "x-powered-by", "date", "vary", "set-cookie"]
        );
        let p = payload(
            "GET",
            b"u",
            &upstream(),
            "1.1",
            Context::Request(r#"{"method":"GET"}"#),
        )
        .unwrap();
        let v: Value = serde_json::from_str(&p).unwrap();
        assert_eq!(v["request"]["method"], "GET");
        assert_eq!(status_text(201), "");
        assert_eq!(status_text(429), "TOO MANY REQUESTS");
    }

    #[test]
    fn reply_replaces_response() {
        let members = reply::parse_members(
            br#"{"response_code":"200","headers":[{"content-type":"application/json"}],"body":"{}"}"#,
        )
        .unwrap();
        let r = client_response(&members, &upstream()).unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"{}");
        assert_eq!(r.header("content-type"), Some("application/json"));
        assert!(r.header("x-powered-by").is_none());
        assert!(r.header("set-cookie").is_none());
        assert!(r.header("date").is_some());
        assert_eq!(r.header("vary"), Some("Accept"));

        let m = reply::parse_members(br#"{"response_code":403,"headers":[]}"#).unwrap();
        let r = client_response(&m, &upstream()).unwrap();
        assert_eq!((r.status, r.body.len()), (403, 0));

        for bad in [
            &br#"{"response_code":"200"}"#[..],
            br#"{"headers":[]}"#,
            br#"{"response_code":"200","headers":[],"body":null}"#,
        ] {
            let m = reply::parse_members(bad).unwrap();
            assert!(matches!(
                client_response(&m, &upstream()),
                Err(Failure::Malformed { .. })
            ));
        }
    }
}
