//! The client request as the policy provider sees it: the `/sideband/request`
//! payload (docs/sideband-protocol.md#request-payload).

use crate::http::Header;
use crate::protocol::json;
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use serde::Serialize;

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

    /// The JSON body of `POST /sideband/request`
    /// (docs/sideband-protocol.md#request-payload).
    pub fn payload(&self) -> Result<Payload, String> {
        let fields = RequestFields {
            source_ip: &self.source_ip,
            source_port: &self.source_port,
            method: &self.method,
            url: Text(&self.url()),
            body: self.body.as_deref().map(Text),
            headers: Headers(&self.headers),
            http_version: &self.http_version,
        };
        let size = 256 + self.body.as_ref().map_or(0, Vec::len) * 2 + self.headers.len() * 64;
        let mut out = Vec::with_capacity(size);
        serde_json::to_writer(&mut out, &fields).map_err(|e| e.to_string())?;
        // The certificate is JSON already: its text is the last member.
        if let Some(cert) = &self.client_certificate {
            json::append_raw_member(&mut out, "client_certificate", cert);
        }
        let text = String::from_utf8(out).map_err(|e| e.to_string())?;
        let body_range = self
            .body
            .as_ref()
            .and_then(|_| member_range(&text, "body", "headers"));
        Ok(Payload { text, body_range })
    }
}

/// Where member `name`'s value stands in a payload written from
/// [`RequestFields`], given the member that follows it. The text `,"name":`
/// cannot occur inside an earlier value: a quote inside a JSON string is
/// always escaped.
fn member_range(text: &str, name: &str, next: &str) -> Option<std::ops::Range<usize>> {
    let start = text.find(&format!(",\"{name}\":"))? + name.len() + 4;
    let len = text.get(start..)?.find(&format!(",\"{next}\":"))?;
    Some(start..start + len)
}

/// A `/sideband/request` payload as sent.
#[derive(Debug)]
pub struct Payload {
    text: String,
    /// Where the `body` member's JSON literal stands in `text`.
    body_range: Option<std::ops::Range<usize>>,
}

impl Payload {
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The `body` member's JSON literal, when a body was sent: a reply that
    /// echoes it is recognised without decoding it.
    pub fn body_literal(&self) -> Option<&str> {
        self.body_range.clone().and_then(|r| self.text.get(r))
    }
}

/// The payload's members in the Lua plugin's order.
#[derive(Serialize)]
struct RequestFields<'a> {
    source_ip: &'a str,
    source_port: &'a str,
    method: &'a str,
    url: Text<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    body: Option<Text<'a>>,
    headers: Headers<'a>,
    http_version: &'a str,
}

/// Bytes as a JSON string under the filter's encoding (see `json`).
pub struct Text<'a>(pub &'a [u8]);

impl Serialize for Text<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&json::text(self.0))
    }
}

/// Headers as `[{"name":"value"},...]`, one object per value, in order.
pub struct Headers<'a>(pub &'a [Header]);

impl Serialize for Headers<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for h in self.0 {
            seq.serialize_element(&OneHeader(h))?;
        }
        seq.end()
    }
}

struct OneHeader<'a>(&'a Header);

impl Serialize for OneHeader<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(1))?;
        map.serialize_entry(&self.0.name, &Text(&self.0.value))?;
        map.end()
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
    let spaced: Vec<u8> = s
        .iter()
        .map(|&b| if b == b'+' { b' ' } else { b })
        .collect();
    percent_encoding::percent_decode(&spaced).collect()
}

/// What `ngx.encode_args` escapes: every byte but `A-Z a-z 0-9 - . _ ~ ! * ' ( )`.
const ARG_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'!')
    .remove(b'*')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')');

fn escape_component(out: &mut String, s: &[u8]) {
    out.extend(percent_encoding::percent_encode(s, ARG_ESCAPED));
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

    /// Why the query is normalised by hand: the URL standard's form encoding
    /// (`form_urlencoded`, which `url` uses) writes a space as `+` and escapes
    /// `~ ! ' ( )`, so the `url` the policy server sees would differ from the
    /// Lua plugin's.
    #[test]
    fn form_encoding_would_change_the_query() {
        let raw = b"q=a b&s=~!'()*";
        assert_eq!(normalize_query(raw), "q=a%20b&s=~!'()*");
        let form: String = url::form_urlencoded::parse(raw)
            .fold(
                url::form_urlencoded::Serializer::new(String::new()),
                |mut s, (k, v)| {
                    s.append_pair(&k, &v);
                    s
                },
            )
            .finish();
        assert_ne!(form, normalize_query(raw));
        assert_eq!(form, "q=a+b&s=%7E%21%27%28%29*");
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
        let v: serde_json::Value = serde_json::from_str(req.payload().unwrap().text()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "source_ip": "10.0.0.5", "source_port": "40000", "method": "GET",
                "url": "http://kong:8000/a/b", "body": "",
                "headers": [{"x-m": "1"}, {"x-m": "2"}], "http_version": "1.1"
            })
        );
    }

    /// The payload's exact bytes (serde's derive writes what the
    /// hand-written encoder of earlier versions wrote, byte for byte): member
    /// order, escapes (`\\u00XX` lower-case, `\\b \\f \\n \\r \\t`, DEL and
    /// non-ASCII as is), non-UTF-8 bytes as Latin-1, raw certificate JSON.
    #[test]
    fn payload_bytes_are_exact() {
        let req = ClientRequest {
            source_ip: "10.0.0.5".into(),
            source_port: "40000".into(),
            method: "POST".into(),
            scheme: "https".into(),
            host: "kong".into(),
            port: "8443".into(),
            path: b"/a/\xff\"b".to_vec(),
            raw_query: b"q=a b&x=%2F&\xc3\xa9=1".to_vec(),
            headers: vec![
                Header::new(
                    "X-M",
                    b"tab\there \"q\" \\ \x01\x1f\x7f \xe9t\xc3\xa9".to_vec(),
                ),
                Header::new("x-m", "2"),
            ],
            body: Some(b"{\"json\": [1, 2]}\n\r\x08\x0c</script>".to_vec()),
            http_version: "2".into(),
            client_certificate: Some(r#"{"subject_dn":"CN=x","x5t#S256":"abc"}"#.into()),
        };
        let p = req.payload().unwrap();
        let del = |s: &str| s.replace("{DEL}", "\u{7f}");
        assert_eq!(
            p.text(),
            del(
                r#"{"source_ip":"10.0.0.5","source_port":"40000","method":"POST","url":"https://kong:8443/a/ÿ\"b?q=a%20b&x=%2F&%C3%A9=1","body":"{\"json\": [1, 2]}\n\r\b\f</script>","headers":[{"x-m":"tab\there \"q\" \\ \u0001\u001f{DEL} été"},{"x-m":"2"}],"http_version":"2","client_certificate":{"subject_dn":"CN=x","x5t#S256":"abc"}}"#
            )
        );
        assert_eq!(
            p.body_literal(),
            Some(r#""{\"json\": [1, 2]}\n\r\b\f</script>""#)
        );
        let up = crate::protocol::response_hook::UpstreamResponse {
            status: 201,
            headers: vec![
                Header::new("Content-Type", "text/x"),
                Header::new("connection", "close"),
                Header::new("x-b", b"\xff".to_vec()),
            ],
            body: b"b\"\x00y".to_vec(),
        };
        use crate::protocol::response_hook::{payload, Context};
        let with_state = payload(
            "PUT",
            b"https://kong:8443/a?q=1",
            &up,
            "1.1",
            Context::State(r#"{"k": [1, 2.50]}"#),
        );
        assert_eq!(
            with_state.unwrap(),
            r#"{"method":"PUT","url":"https://kong:8443/a?q=1","body":"b\"\u0000y","response_code":"201","response_status":"","headers":[{"content-type":"text/x"},{"x-b":"ÿ"}],"http_version":"1.1","state":{"k": [1, 2.50]}}"#
        );
        let with_request = payload("PUT", b"u", &up, "1.1", Context::Request(p.text()));
        assert_eq!(
            with_request.unwrap(),
            del(
                r#"{"method":"PUT","url":"u","body":"b\"\u0000y","response_code":"201","response_status":"","headers":[{"content-type":"text/x"},{"x-b":"ÿ"}],"http_version":"1.1","request":{"source_ip":"10.0.0.5","source_port":"40000","method":"POST","url":"https://kong:8443/a/ÿ\"b?q=a%20b&x=%2F&%C3%A9=1","body":"{\"json\": [1, 2]}\n\r\b\f</script>","headers":[{"x-m":"tab\there \"q\" \\ \u0001\u001f{DEL} été"},{"x-m":"2"}],"http_version":"2","client_certificate":{"subject_dn":"CN=x","x5t#S256":"abc"}}}"#
            )
        );
    }
}
