//! What the host knows about the client request, read once in the request
//! headers step: the payload's fields (with the fallbacks of hosts without
//! Kong's properties), every raw header for the response hook, and whether a
//! body step follows.

use crate::cache::Key;
use crate::cert;
use crate::failure::Failure;
use crate::host::{HeaderMap, Host};
use crate::http::Header;
use crate::protocol::request::{self, ClientRequest, MAX_HEADERS};
use crate::url::strip_port;

/// The client request as read, and what was sent about it.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The request as sent to the policy provider.
    pub request: ClientRequest,
    /// Every request header, raw, for the response hook's upstream call.
    pub all_headers: Vec<Header>,
    /// The raw request target (`$request_uri`).
    pub client_target: String,
    /// The client's `Host` header.
    pub client_host: String,
    /// Size of a body the host could not hand over (spooled to a file).
    pub unread_body_size: usize,
    /// Lines of the failure policy's marker header the client sent itself
    /// (never shown to the policy server, never passed on as sent).
    pub client_markers: usize,
    /// The decision cache's key for this request, when its decision may be
    /// cached (a miss); stale-if-error looks it up again.
    pub cache_key: Option<Key>,
}

/// How the client announced its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// No body (no `Content-Length`, or 0).
    None,
    /// A non-zero `Content-Length`: the host runs the body step.
    Length,
    /// `Transfer-Encoding` without a length: the body may still be empty, and
    /// the host runs no body step for an empty body.
    Unsized,
}

/// The request's headers as the policy server sees them (no pseudo-headers,
/// without the failure policy's `marker` header), and how many marker lines
/// the client sent.
pub fn headers_of(map: &HeaderMap, marker: &str) -> (Vec<Header>, usize) {
    let mut all: Vec<Header> = map
        .iter()
        .filter(|(n, _)| !n.starts_with(':'))
        .map(|(n, v)| Header::new(n, v.to_vec()))
        .collect();
    let before = all.len();
    all.retain(|h| h.name != marker);
    let markers = before - all.len();
    (all, markers)
}

/// True when the host may have shown only part of the request's headers.
pub fn truncated(map: &HeaderMap) -> bool {
    request::header_map_may_be_truncated(map.declared.max(map.len()))
}

/// How the request announces its body.
pub fn announced(map: &HeaderMap) -> Announced {
    let by_length = map
        .get("content-length")
        .map(|v| {
            std::str::from_utf8(v)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_none_or(|n| n > 0)
        })
        .unwrap_or(false);
    if by_length {
        Announced::Length
    } else if map.get("transfer-encoding").is_some() {
        Announced::Unsized
    } else {
        Announced::None
    }
}

/// The client request (from its header map, read once by the caller), and
/// how its body was announced. `marker`: the failure policy's marker
/// header, which is the filter's to set, so a client's own is left out.
pub fn client_request(
    h: &mut dyn Host,
    map: &HeaderMap,
    marker: &str,
) -> Result<(Seen, Announced), Failure> {
    if truncated(map) {
        return Err(Failure::TooManyHeaders {
            visible: map.iter().filter(|(n, _)| !n.starts_with(':')).count(),
        });
    }
    let method = map.text(":method").unwrap_or_default();
    let (all_headers, client_markers) = headers_of(map, marker);
    let client_host = map.text("host").unwrap_or_default();

    let client_target = h
        .property_text(&["request", "path"])
        .unwrap_or_else(|| map.text(":path").unwrap_or_default());
    let (raw_path, target_query) = client_target
        .split_once('?')
        .unwrap_or((client_target.as_str(), ""));
    let raw_query = h
        .property(&["request", "query"])
        .unwrap_or_else(|| target_query.as_bytes().to_vec());

    let scheme = h
        .property_text(&["kong", "request", "forwarded_scheme"])
        .or_else(|| h.property_text(&["request", "scheme"]))
        .or_else(|| map.text(":scheme"))
        .unwrap_or_else(|| "http".into())
        .to_ascii_lowercase();
    let authority = map.text(":authority").unwrap_or_default();
    let host = h
        .property_text(&["kong", "request", "forwarded_host"])
        .or_else(|| h.property_text(&["ngx", "host"]))
        .unwrap_or_else(|| strip_port(&client_host).to_string())
        .to_ascii_lowercase();
    let port = h
        .property_text(&["kong", "request", "forwarded_port"])
        .or_else(|| h.property_text(&["ngx", "server_port"]))
        .or_else(|| authority.rsplit_once(':').map(|(_, p)| p.to_string()))
        .unwrap_or_else(|| if scheme == "https" { "443" } else { "80" }.into());

    let (source_ip, source_port) = source(h);
    let http_version = h
        .property_text(&["request", "protocol"])
        .map(|p| request::http_version_label(&p))
        .unwrap_or_else(|| "1.1".into());

    let client_certificate = match h.property(&["ngx", "ssl_client_raw_cert"]) {
        Some(pem) if !pem.is_empty() => Some(cert::client_certificate_json(&pem).map_err(|e| {
            Failure::BadClientCertificate {
                error: e.to_string(),
            }
        })?),
        _ => None,
    };

    let announced = announced(map);

    let request = ClientRequest {
        source_ip,
        source_port,
        method,
        scheme,
        host,
        port,
        path: request::normalize_path(raw_path.as_bytes()),
        raw_query,
        headers: all_headers.iter().take(MAX_HEADERS).cloned().collect(),
        body: None,
        http_version,
        client_certificate,
    };
    let seen = Seen {
        request,
        all_headers,
        client_host,
        client_target: client_target.clone(),
        client_markers,
        ..Seen::default()
    };
    Ok((seen, announced))
}

/// Client address and port: `source.address` may be `ip` (nginx) or
/// `ip:port` (Envoy); `source.port` may be text (nginx) or a little-endian
/// integer (Envoy).
fn source(h: &mut dyn Host) -> (String, String) {
    let address = h.property_text(&["source", "address"]).unwrap_or_default();
    let (ip, mut port) = split_address(&address);
    if let Some(p) = h.property(&["source", "port"]) {
        if !p.is_empty() && p.iter().all(u8::is_ascii_digit) {
            port = String::from_utf8_lossy(&p).into_owned();
        } else if let Ok(arr) = <[u8; 8]>::try_from(p.as_slice()) {
            port = u64::from_le_bytes(arr).to_string();
        }
    }
    (ip, port)
}

/// `source.address` as an IP and a port (empty when not given).
fn split_address(address: &str) -> (String, String) {
    match address.parse::<std::net::SocketAddr>() {
        Ok(sa) => (sa.ip().to_string(), sa.port().to_string()),
        Err(_) => (address.to_string(), String::new()),
    }
}

/// The client's IP alone (the cache key's `key_client_ip`).
pub fn client_ip(h: &mut dyn Host) -> String {
    let address = h.property_text(&["source", "address"]).unwrap_or_default();
    split_address(&address).0
}
