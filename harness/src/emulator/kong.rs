//! What Kong itself does around the Wasm filters: route matching, the
//! `upstream_*` variables it sets in `access` (before the filters run), the
//! request it proxies, the headers it adds to responses, its JSON error pages,
//! and the JSON of its entities served as `kong.router.*` properties.

use super::api::{Route, Service};

/// The result of matching a request path against a route.
pub(crate) struct RouteMatch {
    /// The route path that matched.
    pub prefix: String,
    /// `$upstream_uri` before `?args` (Kong v0 path handling, escaped).
    pub upstream_path: String,
}

/// Kong's prefix matching (`paths`) and v0 path handling.
pub(crate) fn match_route(route: &Route, service: &Service, raw_path: &str) -> Option<RouteMatch> {
    let req_path = kong_normalize(raw_path);
    let prefix = route
        .paths
        .iter()
        .filter(|p| !p.starts_with('~') && req_path.starts_with(p.as_str()))
        .max_by_key(|p| p.len())?
        .clone();
    let postfix = req_path.get(prefix.len()..).unwrap_or("").to_string();
    let base = service.path.clone().unwrap_or_else(|| "/".to_string());
    let upstream = upstream_uri_v0(route.strip_path, &base, &postfix, &req_path);
    Some(RouteMatch {
        prefix,
        upstream_path: escape_uri(&upstream),
    })
}

/// `get_upstream_uri_v0` from Kong's router.
fn upstream_uri_v0(strip_path: bool, base: &str, postfix: &str, req_uri: &str) -> String {
    let base_ends_slash = base.ends_with('/');
    if base_ends_slash {
        if strip_path {
            if postfix.is_empty() {
                if base == "/" {
                    return "/".to_string();
                }
                if req_uri.ends_with('/') {
                    return base.to_string();
                }
                return base.get(..base.len() - 1).unwrap_or(base).to_string();
            }
            if postfix.starts_with('/') {
                return format!("{}{}", base.get(..base.len() - 1).unwrap_or(base), postfix);
            }
            return format!("{base}{postfix}");
        }
        return format!("{base}{}", req_uri.get(1..).unwrap_or(""));
    }
    if strip_path {
        if postfix.is_empty() {
            if req_uri.len() > 1 && req_uri.ends_with('/') {
                return format!("{base}/");
            }
            return base.to_string();
        }
        if postfix.starts_with('/') {
            return format!("{base}{postfix}");
        }
        return format!("{base}/{postfix}");
    }
    if req_uri == "/" {
        return base.to_string();
    }
    format!("{base}{req_uri}")
}

/// Kong's path normalisation: percent-decodes unreserved characters and
/// removes dot segments.
pub(crate) fn kong_normalize(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                if v.is_ascii_alphanumeric() || b"-._~".contains(&v) {
                    out.push(v);
                } else {
                    out.push(b'%');
                    out.extend_from_slice(format!("{v:02X}").as_bytes());
                }
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    remove_dot_segments(&String::from_utf8_lossy(&out))
}

/// RFC 3986 dot-segment removal.
pub(crate) fn remove_dot_segments(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    let trailing = path.ends_with("/.") || path.ends_with("/..") || path.ends_with('/');
    for seg in path.split('/') {
        match seg {
            "." => {}
            ".." => {
                segments.pop();
            }
            "" => {}
            s => segments.push(s),
        }
    }
    let mut out = String::from("/");
    out.push_str(&segments.join("/"));
    if trailing && out.len() > 1 {
        out.push('/');
    }
    out
}

/// Kong's URI escaping for `$upstream_uri`.
pub(crate) fn escape_uri(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path.as_bytes() {
        let keep = b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b);
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `upstream_host` when `preserve_host` is off: the service host, with the
/// port unless it is the scheme's default.
pub(crate) fn service_host_header(service: &Service) -> String {
    let default = (service.port == 80 && service.protocol == "http")
        || (service.port == 443 && service.protocol == "https");
    if default {
        service.host.clone()
    } else {
        format!("{}:{}", service.host, service.port)
    }
}

/// Encodes like lua-cjson: compact, `/` escaped as `\/`.
pub(crate) fn cjson(value: &serde_json::Value) -> Vec<u8> {
    let text = serde_json::to_string(value).unwrap_or_default();
    text.replace('/', "\\/").into_bytes()
}

const ENTITY_TIME: u64 = 1_700_000_000;
const WORKSPACE: &str = "d2a6a2a4-0ab8-4fbf-9ffd-86a28a0b6a86";

/// `kong.router.service`: the Service entity as Kong stores it.
pub(crate) fn service_json(service: &Service) -> Vec<u8> {
    let mut obj = serde_json::json!({
        "connect_timeout": service.connect_timeout,
        "created_at": ENTITY_TIME,
        "enabled": true,
        "host": service.host,
        "id": service.id,
        "name": service.name,
        "port": service.port,
        "protocol": service.protocol,
        "read_timeout": service.read_timeout,
        "retries": 5,
        "updated_at": ENTITY_TIME,
        "write_timeout": service.write_timeout,
        "ws_id": WORKSPACE,
    });
    if let (Some(path), Some(map)) = (&service.path, obj.as_object_mut()) {
        map.insert("path".to_string(), serde_json::Value::String(path.clone()));
    }
    cjson(&obj)
}

/// `kong.router.route`: the Route entity as Kong stores it.
pub(crate) fn route_json(route: &Route, service: &Service) -> Vec<u8> {
    let obj = serde_json::json!({
        "created_at": ENTITY_TIME,
        "https_redirect_status_code": 426,
        "id": route.id,
        "name": route.name,
        "path_handling": "v0",
        "paths": route.paths,
        "preserve_host": route.preserve_host,
        "protocols": ["http", "https"],
        "regex_priority": 0,
        "request_buffering": true,
        "response_buffering": true,
        "service": { "id": service.id },
        "strip_path": route.strip_path,
        "updated_at": ENTITY_TIME,
        "ws_id": WORKSPACE,
    });
    cjson(&obj)
}

/// `Server` and `Via` token.
pub(crate) fn server_token(version: &str) -> String {
    format!("kong/{version}")
}

/// Kong's JSON error page for `status` (`kong/error_handlers.lua`).
pub(crate) fn error_message(status: u16) -> String {
    match status {
        400 => "Bad request".to_string(),
        404 => "Not found".to_string(),
        405 => "Method not allowed".to_string(),
        408 => "Request timeout".to_string(),
        411 => "Length required".to_string(),
        412 => "Precondition failed".to_string(),
        413 => "Payload too large".to_string(),
        414 => "URI too long".to_string(),
        417 => "Expectation failed".to_string(),
        500 => "An unexpected error occurred".to_string(),
        502 => "An invalid response was received from the upstream server".to_string(),
        503 => "The upstream server is currently unavailable".to_string(),
        504 => "The upstream server is timing out".to_string(),
        other => format!("The upstream server responded with {other}"),
    }
}

/// The body and content type of a Kong error response, negotiated on
/// `Accept` as Kong does for the common types (JSON by default).
pub(crate) fn error_body(
    message: &str,
    request_id: &str,
    accept: Option<&str>,
) -> (Vec<u8>, &'static str) {
    let accept = accept.unwrap_or("").to_ascii_lowercase();
    if accept.starts_with("text/html") {
        let body = format!(
            "<!doctype html>\n<html>\n  <head>\n    <meta charset=\"utf-8\">\n    <title>Error</title>\n  </head>\n  <body>\n    <h1>Error</h1>\n    <p>{message}.</p>\n    <p>request_id: {request_id}</p>\n  </body>\n</html>\n"
        );
        (body.into_bytes(), "text/html; charset=utf-8")
    } else if accept.starts_with("text/plain") {
        (
            format!("{message}\nrequest_id: {request_id}\n").into_bytes(),
            "text/plain; charset=utf-8",
        )
    } else if accept.starts_with("application/xml") {
        let body = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<error>\n  <message>{message}</message>\n  <requestid>{request_id}</requestid>\n</error>\n"
        );
        (body.into_bytes(), "application/xml; charset=utf-8")
    } else {
        let body =
            format!("{{\n  \"message\":\"{message}\",\n  \"request_id\":\"{request_id}\"\n}}");
        (body.into_bytes(), "application/json; charset=utf-8")
    }
}

/// nginx's built-in error page (plain ngx_wasm_module mode).
pub(crate) fn nginx_error_page(status: u16) -> Vec<u8> {
    let reason = reason_phrase(status);
    format!(
        "<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}</h1></center>\r\n<hr><center>nginx/1.27.1</center>\r\n</body>\r\n</html>\r\n"
    )
    .into_bytes()
}

/// Standard reason phrases nginx uses.
pub(crate) fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Not Allowed",
        408 => "Request Time-out",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Request Entity Too Large",
        414 => "Request-URI Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Temporarily Unavailable",
        504 => "Gateway Time-out",
        _ => "",
    }
}

/// A random 32-hex-digit request id (`$kong_request_id`, `$request_id`).
pub(crate) fn random_id(seed: u64) -> String {
    let mut x = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut out = String::with_capacity(32);
    for _ in 0..4 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.push_str(&format!("{:08x}", x as u32));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(path: Option<&str>) -> Service {
        let mut s = Service::new("s", "http", "upstream", 9000);
        s.path = path.map(str::to_string);
        s
    }

    #[test]
    fn v0_paths() {
        let route = Route::new("r", &["/echo"]);
        let m = match_route(&route, &svc(None), "/echo/a/b").map(|m| m.upstream_path);
        assert_eq!(m.as_deref(), Some("/a/b"));
        let m = match_route(&route, &svc(Some("/base")), "/echo").map(|m| m.upstream_path);
        assert_eq!(m.as_deref(), Some("/base"));
        let mut keep = route.clone();
        keep.strip_path = false;
        let m = match_route(&keep, &svc(Some("/base/")), "/echo/x").map(|m| m.upstream_path);
        assert_eq!(m.as_deref(), Some("/base/echo/x"));
        assert!(match_route(&route, &svc(None), "/other").is_none());
    }

    #[test]
    fn cjson_escapes_slash() {
        assert_eq!(
            cjson(&serde_json::json!({"p": "/a"})),
            br#"{"p":"\/a"}"#.to_vec()
        );
    }
}
