//! Where the response hook sends the request it proxies itself.
//!
//! Inside Kong the target is what Kong routed: the protocol, host and port of
//! `kong.router.service`, the path and query of `ngx.upstream_uri` (after route
//! stripping and the service path) and the `Host` header of
//! `ngx.upstream_host` (after `preserve_host`). On hosts without those
//! properties the `upstream_url` setting gives protocol, host and port, and
//! the client's own path, query and Host are used.

use crate::http::Header;
use crate::protocol::decision::Directives;
use crate::protocol::request::ClientRequest;
use crate::protocol::response_hook::is_hop_by_hop;
use crate::url::{Scheme, Url};
use serde_json::Value;

/// Used when neither the configuration nor the Kong service gives a timeout.
pub const DEFAULT_TIMEOUT_MS: u32 = 60_000;

/// A resolved upstream call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub scheme: Scheme,
    /// The dispatch target, `host:port`.
    pub address: String,
    /// The `Host` header (and TLS SNI).
    pub authority: String,
    /// Path and query of the request line.
    pub path: String,
    pub timeout_ms: u32,
}

/// What the host knows about routing, read from its properties.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    /// `kong.router.service`, JSON.
    pub kong_service: Option<Vec<u8>>,
    /// `ngx.upstream_uri`.
    pub upstream_uri: Option<Vec<u8>>,
    /// `ngx.upstream_host`.
    pub upstream_host: Option<Vec<u8>>,
    /// The client's request target (path and raw query) and Host header, for
    /// hosts without Kong.
    pub client_target: String,
    pub client_host: String,
}

/// Resolves the upstream of the response hook. `override_url` is the
/// `upstream_url` setting, used only when the host has no Kong service.
pub fn resolve(
    routing: &Routing,
    override_url: Option<&Url>,
    timeout_ms: Option<u32>,
) -> Result<Target, String> {
    if let Some(raw) = &routing.kong_service {
        let service: Value = serde_json::from_slice(raw)
            .map_err(|e| format!("kong.router.service is not JSON: {e}"))?;
        let scheme = match service.get("protocol").and_then(Value::as_str) {
            Some("http") => Scheme::Http,
            Some("https") => Scheme::Https,
            Some(other) => {
                return Err(format!(
                    "the Kong service protocol '{other}' is not http or https"
                ))
            }
            None => return Err("kong.router.service has no protocol".into()),
        };
        let host = service
            .get("host")
            .and_then(Value::as_str)
            .filter(|h| !h.is_empty())
            .ok_or("kong.router.service has no host")?;
        let port = service
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(scheme.default_port());
        let uri = routing
            .upstream_uri
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or("ngx.upstream_uri is empty")?;
        let path = String::from_utf8_lossy(uri).into_owned();
        let authority = match routing.upstream_host.as_deref().filter(|h| !h.is_empty()) {
            Some(h) => String::from_utf8_lossy(h).into_owned(),
            None => host_header(host, port, scheme),
        };
        let service_timeout = ["connect_timeout", "write_timeout", "read_timeout"]
            .iter()
            .filter_map(|k| service.get(*k).and_then(Value::as_u64))
            .max()
            .and_then(|t| u32::try_from(t).ok());
        return Ok(Target {
            scheme,
            address: format!("{host}:{port}"),
            authority,
            path,
            timeout_ms: timeout_ms.or(service_timeout).unwrap_or(DEFAULT_TIMEOUT_MS),
        });
    }
    let Some(url) = override_url else {
        return Err(
            "the host exposes no kong.router.service property and upstream_url is not configured"
                .into(),
        );
    };
    Ok(Target {
        scheme: url.scheme,
        address: url.authority(),
        authority: if routing.client_host.is_empty() {
            host_header(&url.host, url.port, url.scheme)
        } else {
            routing.client_host.clone()
        },
        path: if routing.client_target.is_empty() {
            "/".into()
        } else {
            routing.client_target.clone()
        },
        timeout_ms: timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS),
    })
}

fn host_header(host: &str, port: u16, scheme: Scheme) -> String {
    if port == scheme.default_port() {
        host.to_string()
    } else {
        format!("{host}:{port}")
    }
}

/// Applies path, query and Host directives to an upstream request target
/// (`path?query`) and Host header, as Kong would proxy them after the Lua
/// plugin's `set_path`, `set_uri_args` and `set_header("host")`.
pub fn rewrite(path_and_query: &str, host: &str, d: &Directives) -> (String, String) {
    let (path, query) = match path_and_query.split_once('?') {
        Some((p, q)) => (p, q),
        None => (path_and_query, ""),
    };
    let path = d.path.as_deref().unwrap_or(path);
    let query = d.query.as_deref().unwrap_or(query);
    let target = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    (target, d.host.clone().unwrap_or_else(|| host.to_string()))
}

/// The headers of the response hook's own upstream call: the client's
/// headers with the policy's changes, without hop-by-hop headers, `Host` and
/// `Content-Length` (the host sets both), and with the `X-Forwarded-*` and
/// `X-Real-IP` headers Kong would send (a client's `X-Forwarded-For` is
/// extended, its other `X-Forwarded-*` are replaced).
pub fn request_headers(all: &[Header], d: &Directives, client: &ClientRequest) -> Vec<Header> {
    let mut headers = all.to_vec();
    d.apply_headers(&mut headers);
    headers.retain(|h| !is_hop_by_hop(&h.name) && h.name != "host" && h.name != "content-length");
    let forwarded_for = match headers.iter().find(|h| h.name == "x-forwarded-for") {
        Some(h) => format!(
            "{}, {}",
            String::from_utf8_lossy(&h.value),
            client.source_ip
        ),
        None => client.source_ip.clone(),
    };
    headers.retain(|h| !h.name.starts_with("x-forwarded-") && h.name != "x-real-ip");
    for (name, value) in [
        ("x-forwarded-for", forwarded_for),
        ("x-forwarded-proto", client.scheme.clone()),
        ("x-forwarded-host", client.host.clone()),
        ("x-forwarded-port", client.port.clone()),
        ("x-real-ip", client.source_ip.clone()),
    ] {
        headers.push(Header::new(name, value.into_bytes()));
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::parse_url;

    #[test]
    fn upstream_headers_drop_hop_by_hop_and_add_forwarding() {
        let all = vec![
            Header::new("Host", "api"),
            Header::new("Connection", "keep-alive"),
            Header::new("Content-Length", "3"),
            Header::new("X-Forwarded-For", "1.1.1.1"),
            Header::new("X-Forwarded-Host", "spoofed"),
            Header::new("Accept", "*/*"),
        ];
        let client = ClientRequest {
            source_ip: "10.0.0.7".into(),
            scheme: "https".into(),
            host: "api".into(),
            port: "443".into(),
            ..ClientRequest::default()
        };
        let names: Vec<(String, String)> = request_headers(&all, &Directives::default(), &client)
            .into_iter()
            .map(|h| (h.name, String::from_utf8(h.value).unwrap()))
            .collect();
        let want: Vec<(String, String)> = [
            ("accept", "*/*"),
            ("x-forwarded-for", "1.1.1.1, 10.0.0.7"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "api"),
            ("x-forwarded-port", "443"),
            ("x-real-ip", "10.0.0.7"),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        assert_eq!(names, want);
    }

    #[test]
    fn kong_routing_wins() {
        let r = Routing {
            kong_service: Some(br#"{"protocol":"https","host":"echo","port":8443,"read_timeout":30000,"connect_timeout":5000}"#.to_vec()),
            upstream_uri: Some(b"/svc/x?a=1".to_vec()),
            upstream_host: Some(b"public.example".to_vec()),
            ..Default::default()
        };
        let t = resolve(&r, parse_url("http://ignored").ok().as_ref(), None).unwrap();
        assert_eq!(t.scheme, Scheme::Https);
        assert_eq!(t.address, "echo:8443");
        assert_eq!(t.authority, "public.example");
        assert_eq!(t.path, "/svc/x?a=1");
        assert_eq!(t.timeout_ms, 30000);
    }

    #[test]
    fn fallback_and_missing() {
        let r = Routing {
            client_target: "/a?b=1".into(),
            client_host: "api.example".into(),
            ..Default::default()
        };
        let url = parse_url("http://127.0.0.1:9000").unwrap();
        let t = resolve(&r, Some(&url), Some(5)).unwrap();
        assert_eq!(
            (t.address.as_str(), t.path.as_str(), t.timeout_ms),
            ("127.0.0.1:9000", "/a?b=1", 5)
        );
        assert!(resolve(&r, None, None)
            .unwrap_err()
            .contains("upstream_url"));
        let bad = Routing {
            kong_service: Some(br#"{"protocol":"grpc","host":"x"}"#.to_vec()),
            ..Default::default()
        };
        assert!(resolve(&bad, None, None).is_err());
    }

    #[test]
    fn rewrite_path_query_host() {
        let d = Directives {
            path: Some("/v2/x".into()),
            query: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            rewrite("/a?b=1", "h", &d),
            ("/v2/x".to_string(), "h".to_string())
        );
        let d = Directives {
            query: Some("y=2".into()),
            host: Some("other:8443".into()),
            ..Default::default()
        };
        assert_eq!(
            rewrite("/a?b=1", "h", &d),
            ("/a?y=2".to_string(), "other:8443".to_string())
        );
    }
}
