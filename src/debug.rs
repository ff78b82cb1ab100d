//! Debug dumps of sideband exchanges (`enable_debug_logging`).
//!
//! Unlike the Lua plugin (docs/sideband-protocol.md#differences-from-the-lua-plugin,
//! D7), the shared-secret header's value is never printed, credential headers
//! inside payloads are redacted wherever they appear (`headers` arrays, at any
//! depth, so the `request` of a response call too), and bodies are cut to
//! [`DEBUG_BODY_LIMIT`] bytes.

use crate::protocol::json;
use serde_json::Value;

/// Bytes of a JSON body shown in a debug dump.
pub const DEBUG_BODY_LIMIT: usize = 2048;

/// Header values never printed.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "proxy-authorization",
    "set-cookie",
];

const REDACTED: &str = "<redacted>";

/// A sideband call as it goes out: request line, headers (sorted, secret
/// redacted), redacted body.
pub fn dump_call(
    path: &str,
    headers: &[(String, String)],
    secret_header: &str,
    body: &[u8],
) -> String {
    let mut out = format!("POST {path} HTTP/1.1\n");
    push_headers(&mut out, headers, Some(secret_header));
    out.push('\n');
    out.push_str(&redact_body(body));
    out
}

/// A sideband reply: status, headers, redacted body.
pub fn dump_reply(status: Option<u16>, headers: &[(String, String)], body: &[u8]) -> String {
    let mut out = match status {
        Some(s) => format!("{s}\n"),
        None => "(no status)\n".to_string(),
    };
    push_headers(&mut out, headers, None);
    out.push('\n');
    out.push_str(&redact_body(body));
    out
}

fn push_headers(out: &mut String, headers: &[(String, String)], secret: Option<&str>) {
    let mut sorted: Vec<&(String, String)> = headers
        .iter()
        .filter(|(n, _)| !n.starts_with(':'))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in sorted {
        let hidden = secret.is_some_and(|s| name.eq_ignore_ascii_case(s))
            || CREDENTIAL_HEADERS
                .iter()
                .any(|c| name.eq_ignore_ascii_case(c));
        out.push_str(name);
        out.push_str(": ");
        out.push_str(if hidden { REDACTED } else { value });
        out.push('\n');
    }
}

/// A JSON body with credential header values redacted, cut to the limit.
pub fn redact_body(body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Value>(body) {
        Ok(mut v) => {
            redact_value(&mut v);
            v.to_string()
        }
        Err(_) => json::text(body).into_owned(),
    };
    cut(&text, DEBUG_BODY_LIMIT)
}

fn redact_value(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if k == "headers" {
                    redact_header_list(child);
                } else {
                    redact_value(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(redact_value),
        _ => {}
    }
}

fn redact_header_list(v: &mut Value) {
    let Value::Array(items) = v else { return };
    for item in items {
        if let Value::Object(obj) = item {
            for (name, value) in obj.iter_mut() {
                if CREDENTIAL_HEADERS
                    .iter()
                    .any(|c| name.eq_ignore_ascii_case(c))
                {
                    *value = Value::String(REDACTED.into());
                }
            }
        }
    }
}

/// Cuts `s` to at most `limit` bytes on a character boundary, saying so.
pub fn cut(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    let mut end = limit;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}... ({} bytes, cut at {limit})",
        s.get(..end).unwrap_or(""),
        s.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_and_credentials_never_shown() {
        let body = br#"{"headers":[{"authorization":"Bearer abc"},{"x":"y"}],"request":{"headers":[{"cookie":"sid=1"}]}}"#;
        let d = dump_call(
            "/sideband/request",
            &[
                ("CLIENT-TOKEN".into(), "s3cr3t".into()),
                ("content-type".into(), "application/json".into()),
            ],
            "client-token",
            body,
        );
        assert!(!d.contains("s3cr3t"));
        assert!(!d.contains("Bearer abc"));
        assert!(!d.contains("sid=1"));
        assert!(d.contains("\"x\":\"y\""));
        assert!(d.contains("CLIENT-TOKEN: <redacted>"));
    }

    #[test]
    fn bodies_are_cut() {
        let long = format!("\"{}\"", "é".repeat(3000));
        let d = redact_body(long.as_bytes());
        assert!(d.len() < DEBUG_BODY_LIMIT + 64);
        assert!(d.contains("cut at 2048"));
    }
}
