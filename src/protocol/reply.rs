//! A response the filter produces itself (deny, error, or the response hook's
//! result), and the parsing helpers shared by both sideband replies.

use crate::http::{Reply, FRAMING_HEADERS};
use serde_json::value::RawValue;
use serde_json::Value;
use std::collections::BTreeMap;

/// Top-level members of a sideband reply, each kept as raw JSON so that `state`
/// can be passed back byte for byte.
pub type Members = BTreeMap<String, Box<RawValue>>;

/// Why a reply body is not a set of members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MembersError {
    /// Not JSON at all (serde's message).
    NotJson(String),
    /// JSON, but not an object.
    NotObject,
    /// A member name given twice. JSON parsers disagree on which one counts
    /// (serde_json keeps the last, others the first), so a reply with
    /// `"response"` twice could be read as a deny by one and an allow by
    /// another: it is refused.
    Duplicate(String),
}

impl std::fmt::Display for MembersError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MembersError::NotJson(e) => f.write_str(e),
            MembersError::NotObject => f.write_str("the reply is not a JSON object"),
            MembersError::Duplicate(name) => write!(f, "the reply has member '{name}' twice"),
        }
    }
}

/// The members of an object, refusing a name given twice.
struct Unique(Members);

impl<'de> serde::Deserialize<'de> for Unique {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Unique;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Unique, A::Error> {
                let mut members = Members::new();
                while let Some((name, value)) = map.next_entry::<String, Box<RawValue>>()? {
                    if members.contains_key(&name) {
                        return Err(serde::de::Error::custom(format_args!("{DUPLICATE}{name}")));
                    }
                    members.insert(name, value);
                }
                Ok(Unique(members))
            }
        }
        d.deserialize_map(Visit)
    }
}

/// Marks the error [`Unique`] raises, to tell it from serde's own.
const DUPLICATE: &str = "\u{1}duplicate member: ";

/// Parses a sideband reply body into its top-level members.
pub fn parse_members(body: &[u8]) -> Result<Members, MembersError> {
    match serde_json::from_slice::<Unique>(body) {
        Ok(Unique(members)) => Ok(members),
        Err(e) => {
            let text = e.to_string();
            if let Some(rest) = text.strip_prefix(DUPLICATE) {
                // serde_json appends " at line L column C".
                let name = rest.rsplit_once(" at line ").map_or(rest, |(n, _)| n);
                return Err(MembersError::Duplicate(name.to_string()));
            }
            if serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok() {
                Err(MembersError::NotObject)
            } else {
                Err(MembersError::NotJson(text))
            }
        }
    }
}

/// A member parsed as a JSON value: `Ok(None)` when absent, an error when
/// its value cannot be read (a number beyond what a double holds, nesting
/// deeper than 128): such a member is never taken for an absent one.
pub fn member(members: &Members, name: &str) -> Result<Option<Value>, String> {
    match members.get(name) {
        None => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|e| format!("'{name}' cannot be read: {e}")),
    }
}

/// Flattens a policy `headers` array (`[{"Name":"v"},...]`) into lower-cased
/// names with their values in order, as the Lua plugin does. Values must be
/// strings.
pub fn flatten_headers(value: &Value) -> Result<Vec<(String, Vec<String>)>, String> {
    let Value::Array(items) = value else {
        return Err("'headers' is not an array".into());
    };
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for item in items {
        let Value::Object(obj) = item else {
            return Err("an entry of 'headers' is not an object".into());
        };
        for (name, v) in obj {
            let Value::String(v) = v else {
                return Err(format!("header '{name}' has a non-string value"));
            };
            let lname = name.to_ascii_lowercase();
            if !crate::http::is_token(&lname) {
                return Err(format!("'{name}' is not a valid header name"));
            }
            if v.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!("header '{name}' has CR, LF or NUL in its value"));
            }
            match out.iter_mut().find(|(n, _)| *n == lname) {
                Some((_, values)) => values.push(v.clone()),
                None => out.push((lname, vec![v.clone()])),
            }
        }
    }
    Ok(out)
}

/// A status code given as a string or an integer, 100..=599.
pub fn status_code(value: Option<&Value>) -> Result<u16, String> {
    let code = match value {
        Some(Value::String(s)) => s.trim().parse::<u16>().ok(),
        Some(Value::Number(n)) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        None => return Err("'response_code' is missing".into()),
        Some(_) => None,
    };
    match code {
        Some(c) if (100..=599).contains(&c) => Ok(c),
        _ => Err(format!(
            "'response_code' is not a status code from 100 to 599 ({})",
            value.map(Value::to_string).unwrap_or_default()
        )),
    }
}

/// The `body` of a policy response: a string is sent as is, absent means
/// empty, an object or array is sent as compact JSON (as Kong's
/// `response.exit` does); `null` and other types are refused.
pub fn response_body(value: Option<&Value>) -> Result<(Vec<u8>, bool), String> {
    match value {
        None => Ok((Vec::new(), false)),
        Some(Value::String(s)) => Ok((s.as_bytes().to_vec(), false)),
        Some(v @ (Value::Object(_) | Value::Array(_))) => Ok((v.to_string().into_bytes(), true)),
        Some(other) => Err(format!("'body' must be a string, got {other}")),
    }
}

/// Builds the client response from a policy's status, headers and body.
pub fn policy_reply(
    status: u16,
    headers: &[(String, Vec<String>)],
    body: Vec<u8>,
    body_was_json: bool,
) -> Reply {
    let mut reply = Reply {
        status,
        headers: Vec::new(),
        body,
    };
    for (name, values) in headers {
        if FRAMING_HEADERS.contains(&name.as_str()) {
            continue;
        }
        for v in values {
            reply.headers.push((name.clone(), v.clone()));
        }
    }
    if body_was_json && reply.header("content-type").is_none() {
        reply.headers.push((
            "content-type".into(),
            "application/json; charset=utf-8".into(),
        ));
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_keep_state_bytes() {
        let m = parse_members(br#"{"state": {"b":1, "a":[ ]}, "x":1}"#).unwrap();
        assert_eq!(m.get("state").unwrap().get(), r#"{"b":1, "a":[ ]}"#);
        assert!(parse_members(b"[1]").is_err());
        assert!(parse_members(b"").is_err());
    }

    #[test]
    fn flatten_is_case_insensitive_and_ordered() {
        let v: Value = serde_json::from_str(r#"[{"A":"1"},{"a":"2"},{"B":"x"}]"#).unwrap();
        assert_eq!(
            flatten_headers(&v).unwrap(),
            vec![
                ("a".into(), vec!["1".into(), "2".into()]),
                ("b".into(), vec!["x".into()])
            ]
        );
        let bad: Value = serde_json::from_str(r#"[{"a":1}]"#).unwrap();
        assert!(flatten_headers(&bad).is_err());
    }

    #[test]
    fn status_codes() {
        assert_eq!(status_code(Some(&Value::from("403"))), Ok(403));
        assert_eq!(status_code(Some(&Value::from(200))), Ok(200));
        assert!(status_code(Some(&Value::from("abc"))).is_err());
        assert!(status_code(Some(&Value::from(99))).is_err());
        assert!(status_code(None).is_err());
    }
}
