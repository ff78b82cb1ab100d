//! The client request as the policy provider sees it: the `/sideband/request`
//! payload (docs/sideband-protocol.md#request-payload).

use crate::json;

/// At most this many request headers and query arguments are sent, as with
/// OpenResty's defaults in the Lua plugin.
pub const MAX_HEADERS: usize = 100;
pub const MAX_ARGS: usize = 100;

/// Kong's Wasm host hands a filter at most this many request header pairs,
/// the 4 pseudo-headers included (`NGX_HTTP_WASM_MAX_REQ_HEADERS`), and drops
/// the rest silently while nginx still proxies them.
pub const HOST_MAX_HEADER_PAIRS: usize = 100;

/// Whether a request header map read from the host may be missing headers: it
/// is full, so the filter cannot tell 96 headers from more.
pub fn header_map_may_be_truncated(pairs: usize) -> bool {
    pairs >= HOST_MAX_HEADER_PAIRS
}

/// One request or response header: a lower-cased name and the raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(name: &str, value: impl Into<Vec<u8>>) -> Self {
        Header {
            name: name.to_ascii_lowercase(),
            value: value.into(),
        }
    }
}

/// What the host told the filter about a client request.
#[derive(Debug, Clone, Default)]
pub struct ClientRequest {
    pub source_ip: String,
    pub source_port: String,
    pub method: String,
    /// `http` or `https` (Kong's forwarded scheme when available).
    pub scheme: String,
    /// Host without port, lower-cased.
    pub host: String,
    /// The port shown in `url`, always present.
    pub port: String,
    /// Path as Kong normalises it (see [`normalize_path`]).
    pub path: Vec<u8>,
    /// The raw query string (`$args`), without `?`.
    pub raw_query: Vec<u8>,
    /// Request headers in received order, names lower-cased, pseudo-headers
    /// excluded, at most [`MAX_HEADERS`].
    pub headers: Vec<Header>,
    /// The body; `None` when the host could not read it (larger than nginx's
    /// `client_body_buffer_size`): the `body` key is then omitted, as in Lua.
    pub body: Option<Vec<u8>>,
    /// `1.1`, `1` (HTTP/1.0), `2`, `3`.
    pub http_version: String,
    /// The `client_certificate` JSON object text, when the host has one.
    pub client_certificate: Option<String>,
}

impl ClientRequest {
    /// `scheme://host:port/path[?query]` with the query normalised
    /// ([`normalize_query`]); the port is always explicit.
    pub fn url(&self) -> Vec<u8> {
        url_bytes(
            &self.scheme,
            &self.host,
            &self.port,
            &self.path,
            &normalize_query(&self.raw_query),
        )
    }

    /// The JSON body of `POST /sideband/request`.
    pub fn payload(&self) -> String {
        self.payload_and_body_range().0
    }

    /// The payload, and where the `body` string literal stands in it (so a
    /// reply that echoes the body can be recognised without decoding it).
    pub fn payload_and_body_range(&self) -> (String, Option<std::ops::Range<usize>>) {
        let mut body_range = None;
        let mut out = String::with_capacity(256 + self.body.as_ref().map_or(0, Vec::len) * 2);
        out.push_str("{\"source_ip\":");
        json::push_str(&mut out, &self.source_ip);
        out.push_str(",\"source_port\":");
        json::push_str(&mut out, &self.source_port);
        out.push_str(",\"method\":");
        json::push_str(&mut out, &self.method);
        out.push_str(",\"url\":");
        json::push_bytes(&mut out, &self.url());
        if let Some(body) = &self.body {
            out.push_str(",\"body\":");
            let start = out.len();
            json::push_bytes(&mut out, body);
            body_range = Some(start..out.len());
        }
        out.push_str(",\"headers\":");
        push_headers(&mut out, &self.headers);
        out.push_str(",\"http_version\":");
        json::push_str(&mut out, &self.http_version);
        if let Some(cert) = &self.client_certificate {
            out.push_str(",\"client_certificate\":");
            out.push_str(cert);
        }
        out.push('}');
        (out, body_range)
    }
}

/// Builds `scheme://host:port<path>[?query]`.
pub fn url_bytes(scheme: &str, host: &str, port: &str, path: &[u8], query: &str) -> Vec<u8> {
    let mut url = Vec::with_capacity(scheme.len() + host.len() + path.len() + query.len() + 10);
    url.extend_from_slice(scheme.as_bytes());
    url.extend_from_slice(b"://");
    url.extend_from_slice(host.as_bytes());
    url.push(b':');
    url.extend_from_slice(port.as_bytes());
    url.extend_from_slice(path);
    if !query.is_empty() {
        url.push(b'?');
        url.extend_from_slice(query.as_bytes());
    }
    url
}

/// Appends headers as `[{"name":"value"},...]`, one object per value.
pub fn push_headers(out: &mut String, headers: &[Header]) {
    out.push('[');
    for (i, h) in headers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('{');
        json::push_str(out, &h.name);
        out.push(':');
        json::push_bytes(out, &h.value);
        out.push('}');
    }
    out.push(']');
}

/// The `http_version` field from the host's protocol string (`HTTP/1.1`,
/// `HTTP/1.0`, `HTTP/2.0`...). LuaJIT prints 1.0 as `1` and 2.0 as `2`.
pub fn http_version_label(protocol: &str) -> String {
    let v = protocol
        .strip_prefix("HTTP/")
        .or_else(|| protocol.strip_prefix("http/"))
        .unwrap_or(protocol);
    match v.strip_suffix(".0") {
        Some(major) if !major.is_empty() => major.to_string(),
        _ => v.to_string(),
    }
}

/// Query normalisation of the Lua plugin (`ngx.decode_args` then
/// `ngx.encode_args`), keeping the original argument order: split on `&` and the
/// first `=`, percent-decode with `+` as space, drop pairs with an empty key, keep
/// a key without `=` bare, stop after [`MAX_ARGS`] arguments, then re-encode
/// keys and values with upper-case `%XX` for everything but
/// `A-Z a-z 0-9 - . _ ~ ! * ' ( )`.
pub fn normalize_query(raw: &[u8]) -> String {
    let mut out = String::with_capacity(raw.len() + 8);
    let mut count = 0;
    for pair in raw.split(|&b| b == b'&') {
        if pair.is_empty() {
            continue;
        }
        if count == MAX_ARGS {
            break;
        }
        let (key, value) = match pair.iter().position(|&b| b == b'=') {
            Some(i) => (
                pair.get(..i).unwrap_or(&[]),
                Some(pair.get(i + 1..).unwrap_or(&[])),
            ),
            None => (pair, None),
        };
        count += 1;
        let key = unescape_component(key);
        if key.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push('&');
        }
        escape_component(&mut out, &key);
        if let Some(v) = value {
            out.push('=');
            escape_component(&mut out, &unescape_component(v));
        }
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// nginx's URI-component unescape: `%XX` decoded, `+` as space, a `%` not
/// followed by two hex digits kept as is.
fn unescape_component(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while let Some(&b) = s.get(i) {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = s.get(i + 1).copied().and_then(hex_value);
                let lo = s.get(i + 2).copied().and_then(hex_value);
                if let (Some(hi), Some(lo)) = (hi, lo) {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            _ => out.push(b),
        }
        i += 1;
    }
    out
}

fn escape_component(out: &mut String, s: &[u8]) {
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-._~!*'()".contains(&b) {
            out.push(char::from(b));
        } else {
            push_pct(out, b);
        }
    }
}

fn push_pct(out: &mut String, b: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(*HEX.get(usize::from(b >> 4)).unwrap_or(&b'0')));
    out.push(char::from(*HEX.get(usize::from(b & 0xf)).unwrap_or(&b'0')));
}

/// Reserved characters whose escapes Kong keeps (upper-cased) when it
/// normalises a path.
const RESERVED: &[u8] = b"!*'();:@&=+$,/?%#[]";

/// Kong's path normalisation (`kong.request.get_path()` since Kong 3.0), which
/// the Lua plugin sends: percent-decode every `%XX` except reserved characters
/// (whose escapes are upper-cased), resolve `.` and `..` segments, and merge
/// repeated slashes. The result is not re-escaped, as in Lua.
pub fn normalize_path(raw: &[u8]) -> Vec<u8> {
    if raw.is_empty() || raw == b"/" {
        return raw.to_vec();
    }
    // 1. Percent-decoding of non-reserved characters.
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while let Some(&b) = raw.get(i) {
        if b == b'%' {
            let hi = raw.get(i + 1).copied().and_then(hex_value);
            let lo = raw.get(i + 2).copied().and_then(hex_value);
            if let (Some(hi), Some(lo)) = (hi, lo) {
                let c = hi << 4 | lo;
                if RESERVED.contains(&c) {
                    decoded.push(b'%');
                    decoded.extend(
                        raw.get(i + 1..i + 3)
                            .unwrap_or(&[])
                            .iter()
                            .map(u8::to_ascii_uppercase),
                    );
                } else {
                    decoded.push(c);
                }
                i += 3;
                continue;
            }
        }
        decoded.push(b);
        i += 1;
    }
    // 2. Dot segments and slash merging (RFC 3986 §5.2.4, plus `//` → `/`).
    let mut input: &[u8] = &decoded;
    let mut output: Vec<&[u8]> = Vec::new();
    while !input.is_empty() {
        if input == b"/." {
            input = b"/";
        } else if input == b"/.." {
            input = b"/";
            output.pop();
        } else if input == b"." || input == b".." {
            input = b"";
        } else if let Some(rest) = input.strip_prefix(b"../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix(b"./") {
            input = rest;
        } else if input.starts_with(b"/./") {
            input = input.get(2..).unwrap_or(b"");
        } else if input.starts_with(b"/../") {
            input = input.get(3..).unwrap_or(b"");
            output.pop();
        } else if input.starts_with(b"//") {
            input = input.get(1..).unwrap_or(b"");
        } else {
            let end = input
                .iter()
                .skip(1)
                .position(|&b| b == b'/')
                .map_or(input.len(), |p| p + 1);
            output.push(input.get(..end).unwrap_or(b""));
            input = input.get(end..).unwrap_or(b"");
        }
    }
    output.concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_normalisation_keeps_order() {
        assert_eq!(
            normalize_query(b"b=2&a=1+2&a=3&flag&=x"),
            "b=2&a=1%202&a=3&flag"
        );
        assert_eq!(normalize_query(b"k=&x=a/b%2fc"), "k=&x=a%2Fb%2Fc");
        assert_eq!(normalize_query(b"p=%zz&q=%C3%A9"), "p=%25zz&q=%C3%A9");
        assert_eq!(normalize_query(b""), "");
        assert_eq!(normalize_query(b"&&a=1&&"), "a=1");
        let many: Vec<String> = (0..150).map(|i| format!("k{i}=v")).collect();
        let n = normalize_query(many.join("&").as_bytes());
        assert_eq!(n.split('&').count(), 100);
        assert!(n.ends_with("k99=v"));
    }

    #[test]
    fn path_normalisation_follows_kong() {
        let n = |p: &str| String::from_utf8(normalize_path(p.as_bytes())).unwrap();
        assert_eq!(n("/a/b"), "/a/b");
        assert_eq!(n("/a/./b/../c"), "/a/c");
        assert_eq!(n("/a//b///c"), "/a/b/c");
        assert_eq!(n("/a%20b/%7euser"), "/a b/~user");
        assert_eq!(n("/a%2fb%3f"), "/a%2Fb%3F");
        assert_eq!(n("/%2e%2e/x"), "/x");
        assert_eq!(n("/.."), "/");
        assert_eq!(n("/"), "/");
    }

    #[test]
    fn versions_print_like_luajit() {
        assert_eq!(http_version_label("HTTP/1.1"), "1.1");
        assert_eq!(http_version_label("HTTP/1.0"), "1");
        assert_eq!(http_version_label("HTTP/2.0"), "2");
        assert_eq!(http_version_label("HTTP/3.0"), "3");
    }

    #[test]
    fn payload_shape() {
        let req = ClientRequest {
            source_ip: "10.0.0.5".into(),
            source_port: "40000".into(),
            method: "GET".into(),
            scheme: "http".into(),
            host: "kong".into(),
            port: "8000".into(),
            path: b"/a/b".to_vec(),
            raw_query: Vec::new(),
            headers: vec![Header::new("X-M", "1"), Header::new("x-m", "2")],
            body: Some(Vec::new()),
            http_version: "1.1".into(),
            client_certificate: None,
        };
        let v: serde_json::Value = serde_json::from_str(&req.payload()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "source_ip": "10.0.0.5", "source_port": "40000", "method": "GET",
                "url": "http://kong:8000/a/b", "body": "",
                "headers": [{"x-m": "1"}, {"x-m": "2"}], "http_version": "1.1"
            })
        );
    }
}
