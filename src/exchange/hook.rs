//! The response hook's steps on this host: the filter sends the allowed
//! request to the upstream itself (Kong's host refuses a dispatch in the
//! response steps), then builds the `/sideband/response` payload from what
//! came back.

use crate::config::Config;
use crate::failure::{self, Failure};
use crate::host::{Body, Dispatch, HeaderMap, Host};
use crate::http::Header;
use crate::protocol::decision::Directives;
use crate::protocol::json;
use crate::protocol::request::Payload;
use crate::protocol::response_hook::{self, UpstreamResponse};
use crate::upstream::{self, Routing, Target};
use std::time::Duration;

use super::read::Seen;

/// A finished dispatch as the host reported it. `status` is `None` for a
/// call the host reports as failed.
#[derive(Clone, Copy)]
pub struct CallReply<'a> {
    pub status: Option<u16>,
    pub dispatch_status: Option<&'a str>,
    pub map: &'a HeaderMap,
    pub body_size: usize,
}

impl CallReply<'_> {
    /// The reply's body: empty when there is none, or when the host cannot
    /// hand it over.
    pub fn body(&self, h: &mut dyn Host) -> Vec<u8> {
        match self.body_size {
            0 => Vec::new(),
            n => h.body(Body::CallResponse, n).unwrap_or_default(),
        }
    }
}

/// Sends the (changed) request to the upstream Kong routed to.
pub fn call_upstream(
    h: &mut dyn Host,
    config: &Config,
    seen: &Seen,
    d: &Directives,
) -> Result<(u32, Target), Failure> {
    let routing = Routing {
        kong_service: h.property(&["kong", "router", "service"]),
        upstream_uri: h.property(&["ngx", "upstream_uri"]),
        upstream_host: h.property(&["ngx", "upstream_host"]),
        client_target: seen.client_target.clone(),
        client_host: seen.client_host.clone(),
    };
    let target = upstream::resolve(
        &routing,
        config.upstream_url.as_ref(),
        config.upstream_timeout_ms,
    )
    .map_err(|what| Failure::NoUpstream { what })?;
    let (mut path, authority) = upstream::rewrite(&target.path, &target.authority, d);
    // The host traps the instance on a call without `:method` or `:path`
    // (`ngx_http_proxy_wasm_dispatch_err`, in a hostcall): found by fuzzing.
    // An empty path is `/` in an http URL (the policy's URLs already get
    // one); a request without a method cannot be sent at all (nginx refuses
    // one from a client, so only a host that passes it on gets here).
    if path.is_empty() || path.starts_with('?') {
        path.insert(0, '/');
    }
    let method = d.method.as_deref().unwrap_or(&seen.request.method);
    if method.is_empty() {
        return Err(Failure::Host {
            what: "the request has no method, so the response hook cannot send it upstream".into(),
        });
    }
    let body = match (&d.body, &seen.request.body) {
        (Some(b), _) | (None, Some(b)) => b,
        (None, None) => {
            return Err(Failure::RequestBodyUnreadable {
                size: seen.unread_body_size,
            })
        }
    };
    let headers = upstream::request_headers(&seen.all_headers, d, &seen.request);
    // Dispatch takes text values: a header value that is not UTF-8 travels
    // as the UTF-8 of its Latin-1 text (see `json::text`).
    let texts: Vec<(&str, String)> = headers
        .iter()
        .map(|h| (h.name.as_str(), json::text(&h.value).into_owned()))
        .collect();
    let mut call_headers: Vec<(&str, &str)> = vec![
        (":method", method),
        (":path", &path),
        (":authority", &authority),
        (":scheme", target.scheme.as_str()),
    ];
    call_headers.extend(texts.iter().map(|(n, v)| (*n, v.as_str())));
    let call = Dispatch {
        address: &target.address,
        headers: call_headers,
        body,
        timeout: Duration::from_millis(u64::from(target.timeout_ms)),
    };
    match h.dispatch(call) {
        Ok(token) => Ok((token, target)),
        Err(reason) => Err(Failure::UpstreamFailed {
            target: target.address,
            detail: format!("the host refused the call ({reason})"),
        }),
    }
}

/// The upstream's response, read, and the `/sideband/response` payload.
pub fn after_upstream(
    h: &mut dyn Host,
    config: &Config,
    seen: &Seen,
    sent: &Payload,
    d: &Directives,
    target: &Target,
    reply: CallReply<'_>,
) -> Result<(UpstreamResponse, String), Failure> {
    let Some(status) = reply.status else {
        let detail = reply
            .dispatch_status
            .unwrap_or("no :status in the response");
        return Err(if failure::timed_out(detail) {
            Failure::UpstreamTimeout {
                target: target.address.clone(),
            }
        } else {
            Failure::UpstreamFailed {
                target: target.address.clone(),
                detail: detail.to_string(),
            }
        });
    };
    let limit = config.max_response_body_bytes;
    if reply.body_size > limit {
        return Err(Failure::UpstreamTooLarge {
            size: reply.body_size,
            limit,
        });
    }
    let body = reply.body(h);
    let upstream = UpstreamResponse {
        status,
        headers: reply
            .map
            .iter()
            .filter(|(n, _)| !n.starts_with(':'))
            .map(|(n, v)| Header::new(n, v.to_vec()))
            .collect(),
        body,
    };
    let payload = response_hook::payload_for(&seen.request, d, &upstream, sent.text())
        .map_err(|what| Failure::Host { what })?;
    Ok((upstream, payload))
}
