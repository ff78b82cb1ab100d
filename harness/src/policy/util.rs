//! Small helpers for the policy engine: globs, URLs and query strings, header
//! lists, JSON fields, and the requester's subject.

use base64::Engine as _;
use serde_json::{Map, Value};

use crate::http::percent_decode;

/// Matches `text` against a glob where `*` stands for any characters
/// (including none and including `/`); every other character is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    // Classic wildcard matching with backtracking to the last `*`.
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some('*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(c) if Some(c) == text.get(t) => {
                p += 1;
                t += 1;
            }
            _ => match star {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    star = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern
        .get(p..)
        .is_some_and(|rest| rest.iter().all(|&c| c == '*'))
}

// ---------------------------------------------------------------------------
// URLs and query strings
// ---------------------------------------------------------------------------

/// A URL split into `scheme://authority`, path and query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlParts {
    /// e.g. `https://api.example.com:8443` (empty for a bare path).
    pub prefix: String,
    /// e.g. `/accounts/123` (may be empty).
    pub path: String,
    /// The raw query without `?`, if the URL had a `?`.
    pub query: Option<String>,
}

impl UrlParts {
    pub fn parse(url: &str) -> UrlParts {
        let authority_start = url.find("://").map(|i| i + 3).unwrap_or(0);
        let rest = url.get(authority_start..).unwrap_or_default();
        let path_start = rest
            .find(['/', '?'])
            .map(|i| i + authority_start)
            .unwrap_or(url.len());
        let prefix = url.get(..path_start).unwrap_or_default().to_string();
        let after = url.get(path_start..).unwrap_or_default();
        let (path, query) = match after.split_once('?') {
            Some((path, query)) => (path.to_string(), Some(query.to_string())),
            None => (after.to_string(), None),
        };
        UrlParts {
            prefix,
            path,
            query,
        }
    }

    /// The path used for matching (`/` when empty).
    pub fn match_path(&self) -> &str {
        if self.path.is_empty() {
            "/"
        } else {
            &self.path
        }
    }

    /// Puts the URL back together; an empty query is left out.
    pub fn to_url(&self) -> String {
        match self.query.as_deref() {
            Some(query) if !query.is_empty() => format!("{}{}?{}", self.prefix, self.path, query),
            _ => format!("{}{}", self.prefix, self.path),
        }
    }
}

/// Percent-encodes a query component (unreserved characters `A-Z a-z 0-9 - . _ ~` kept).
pub fn encode_component(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A raw query string as a list of `key[=value]` pieces, edited without
/// re-encoding the pieces that are not touched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryPieces(Vec<(String, Option<String>)>);

impl QueryPieces {
    pub fn parse(query: &str) -> QueryPieces {
        QueryPieces(
            query
                .split('&')
                .filter(|piece| !piece.is_empty())
                .map(|piece| match piece.split_once('=') {
                    Some((key, value)) => (key.to_string(), Some(value.to_string())),
                    None => (piece.to_string(), None),
                })
                .collect(),
        )
    }

    /// Decoded `(key, value)` pairs.
    pub fn decoded(&self) -> Vec<(String, String)> {
        self.0
            .iter()
            .map(|(key, value)| {
                (
                    percent_decode(key, true),
                    percent_decode(value.as_deref().unwrap_or_default(), true),
                )
            })
            .collect()
    }

    fn key_is(raw_key: &str, name: &str) -> bool {
        percent_decode(raw_key, true) == name
    }

    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(key, _)| !Self::key_is(key, name));
    }

    pub fn rename(&mut self, old: &str, new: &str) {
        for (key, _) in self.0.iter_mut() {
            if Self::key_is(key, old) {
                *key = encode_component(new);
            }
        }
    }

    /// Sets `name` to `value`: the first occurrence is replaced and the others
    /// removed, or the pair is appended.
    pub fn set(&mut self, name: &str, value: &str) {
        let encoded = Some(encode_component(value));
        let mut found = false;
        self.0.retain_mut(|(key, existing)| {
            if !Self::key_is(key, name) {
                return true;
            }
            if found {
                return false;
            }
            found = true;
            *existing = encoded.clone();
            true
        });
        if !found {
            self.0.push((encode_component(name), encoded));
        }
    }

    pub fn to_query(&self) -> String {
        self.0
            .iter()
            .map(|(key, value)| match value {
                Some(value) => format!("{key}={value}"),
                None => key.clone(),
            })
            .collect::<Vec<_>>()
            .join("&")
    }
}

// ---------------------------------------------------------------------------
// Header lists
// ---------------------------------------------------------------------------

/// Header lines as `(name as sent, value)`, in order.
pub type HeaderList = Vec<(String, String)>;

/// Every value of `name` (case-insensitive).
pub fn header_values<'a>(headers: &'a HeaderList, name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

/// True when some value of header `name` matches the glob.
pub fn header_matches(headers: &HeaderList, name: &str, pattern: &str) -> bool {
    header_values(headers, name)
        .iter()
        .any(|value| glob_match(pattern, value))
}

pub fn remove_header(headers: &mut HeaderList, name: &str) {
    headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
}

/// Replaces every line of `name` by `values`, at the place of the first old line
/// (or at the end when there was none).
pub fn set_header(headers: &mut HeaderList, name: &str, values: &[String]) {
    let position = headers
        .iter()
        .position(|(n, _)| n.eq_ignore_ascii_case(name))
        .unwrap_or(headers.len());
    remove_header(headers, name);
    let position = position.min(headers.len());
    let new_lines = values.iter().map(|v| (name.to_string(), v.clone()));
    headers.splice(position..position, new_lines);
}

/// Appends lines of `name`.
pub fn add_header(headers: &mut HeaderList, name: &str, values: &[String]) {
    for value in values {
        headers.push((name.to_string(), value.clone()));
    }
}

/// The `[{"name": "value"}, ...]` wire form of a header list.
pub fn headers_to_json(headers: &HeaderList) -> Value {
    Value::Array(
        headers
            .iter()
            .map(|(name, value)| {
                let mut object = Map::new();
                object.insert(name.clone(), Value::String(value.clone()));
                Value::Object(object)
            })
            .collect(),
    )
}

/// Reads `[{"name": "value"}, ...]`. Every key/value pair of every object is a
/// header line. `field` names the field in error messages.
pub fn headers_from_json(value: &Value, field: &str) -> Result<HeaderList, String> {
    let list = value
        .as_array()
        .ok_or_else(|| format!("`{field}` must be an array of objects"))?;
    let mut headers = Vec::new();
    for (index, item) in list.iter().enumerate() {
        let object = item
            .as_object()
            .ok_or_else(|| format!("`{field}[{index}]` must be an object"))?;
        for (name, value) in object {
            let text = value
                .as_str()
                .ok_or_else(|| format!("`{field}[{index}].{name}` must be a string"))?;
            headers.push((name.clone(), text.to_string()));
        }
    }
    Ok(headers)
}

// ---------------------------------------------------------------------------
// JSON fields: a plain name (top-level key) or a JSON pointer (`/a/b`)
// ---------------------------------------------------------------------------

fn pointer_tokens(pointer: &str) -> Vec<String> {
    pointer
        .split('/')
        .skip(1)
        .map(|token| token.replace("~1", "/").replace("~0", "~"))
        .collect()
}

fn tokens_of(path: &str) -> Vec<String> {
    if path.starts_with('/') {
        pointer_tokens(path)
    } else {
        vec![path.to_string()]
    }
}

fn child_mut<'a>(value: &'a mut Value, token: &str) -> Option<&'a mut Value> {
    match value {
        Value::Object(object) => object.get_mut(token),
        Value::Array(array) => token
            .parse::<usize>()
            .ok()
            .and_then(move |index| array.get_mut(index)),
        _ => None,
    }
}

/// The value at `path`, if any.
pub fn get_field<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    if path.starts_with('/') {
        value.pointer(path)
    } else {
        value.get(path)
    }
}

/// Removes the value at `path`; true when something was removed.
pub fn remove_field(value: &mut Value, path: &str) -> bool {
    let mut tokens = tokens_of(path);
    let Some(last) = tokens.pop() else {
        return false;
    };
    let mut parent = value;
    for token in &tokens {
        match child_mut(parent, token) {
            Some(child) => parent = child,
            None => return false,
        }
    }
    match parent {
        Value::Object(object) => object.shift_remove(&last).is_some(),
        Value::Array(array) => match last.parse::<usize>() {
            Ok(index) if index < array.len() => {
                array.remove(index);
                true
            }
            _ => false,
        },
        _ => false,
    }
}

/// Sets the value at `path`, creating missing objects on the way; false when
/// the path goes through something that is not an object.
pub fn set_field(value: &mut Value, path: &str, new_value: Value) -> bool {
    let mut tokens = tokens_of(path);
    let Some(last) = tokens.pop() else {
        return false;
    };
    let mut parent = value;
    for token in &tokens {
        let Value::Object(object) = parent else {
            return false;
        };
        parent = object
            .entry(token.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    match parent {
        Value::Object(object) => {
            object.insert(last, new_value);
            true
        }
        Value::Array(array) => match last.parse::<usize>() {
            Ok(index) => match array.get_mut(index) {
                Some(slot) => {
                    *slot = new_value;
                    true
                }
                None => false,
            },
            Err(_) => false,
        },
        _ => false,
    }
}

/// Redacts: a plain name replaces that key's value at any depth; a pointer
/// replaces one value. Returns how many values were replaced.
pub fn redact_field(value: &mut Value, path: &str, with: &Value) -> usize {
    if path.starts_with('/') {
        return match value.pointer_mut(path) {
            Some(slot) => {
                *slot = with.clone();
                1
            }
            None => 0,
        };
    }
    match value {
        Value::Object(object) => {
            let mut count = 0;
            for (key, child) in object.iter_mut() {
                if key == path {
                    *child = with.clone();
                    count += 1;
                } else {
                    count += redact_field(child, path, with);
                }
            }
            count
        }
        Value::Array(array) => array
            .iter_mut()
            .map(|child| redact_field(child, path, with))
            .sum(),
        _ => 0,
    }
}

// ---------------------------------------------------------------------------
// Subject of the requester
// ---------------------------------------------------------------------------

/// The `sub` of a token's claims, unless the claims say `"active": false`.
fn subject_of_claims(claims: &Value) -> Option<String> {
    if claims.get("active") == Some(&Value::Bool(false)) {
        return None;
    }
    claims
        .get("sub")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// Who is calling, taken from (in this order) a pre-parsed `access_token`
/// object (PDG's External API Gateway style), or the `Authorization: Bearer`
/// header. A bearer token may be the PDG mock form (a JSON object such as
/// `{"active":true,"sub":"alice"}`), a JWT (its payload's `sub`; the
/// signature is not checked), or an opaque string (the string itself).
pub fn subject(headers: &HeaderList, access_token: Option<&Value>) -> Option<String> {
    if let Some(claims) = access_token {
        return subject_of_claims(claims);
    }
    let authorization = header_values(headers, "authorization").into_iter().next()?;
    let (scheme, token) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    if token.is_empty() {
        return None;
    }
    if token.starts_with('{') {
        return serde_json::from_str::<Value>(token)
            .ok()
            .and_then(|claims| subject_of_claims(&claims));
    }
    let parts: Vec<&str> = token.split('.').collect();
    if let [_, payload, _] = parts.as_slice() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok());
        if let Some(claims) = claims {
            return subject_of_claims(&claims);
        }
    }
    Some(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob_match("/echo/*", "/echo/a/b"));
        assert!(glob_match("*", ""));
        assert!(glob_match("/echo/admin*", "/echo/admin"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(!glob_match("/echo", "/echo/"));
    }

    #[test]
    fn urls_and_queries() {
        let url = UrlParts::parse("https://h:8443/a/b?x=1&y");
        assert_eq!(url.prefix, "https://h:8443");
        assert_eq!(url.path, "/a/b");
        assert_eq!(url.query.as_deref(), Some("x=1&y"));
        assert_eq!(url.to_url(), "https://h:8443/a/b?x=1&y");
        let bare = UrlParts::parse("http://h:80");
        assert_eq!(bare.match_path(), "/");
        let mut query = QueryPieces::parse("name=sedan&operator=contains&name=x");
        query.rename("operator", "compare");
        query.set("name", "a b");
        assert_eq!(query.to_query(), "name=a%20b&compare=contains");
        query.remove("name");
        assert_eq!(query.to_query(), "compare=contains");
    }

    #[test]
    fn headers() {
        let mut headers: HeaderList = vec![
            ("a".into(), "1".into()),
            ("B".into(), "2".into()),
            ("a".into(), "3".into()),
        ];
        set_header(&mut headers, "A", &["9".to_string()]);
        assert_eq!(
            headers,
            vec![("A".into(), "9".into()), ("B".into(), "2".into())]
        );
        let json = headers_to_json(&headers);
        assert_eq!(headers_from_json(&json, "headers").unwrap(), headers);
        assert!(headers_from_json(&json!([{"a": 1}]), "headers").is_err());
    }

    #[test]
    fn json_fields() {
        let mut value = json!({"a": {"ssn": "1", "b": [{"ssn": "2"}]}, "audit": "x"});
        assert!(remove_field(&mut value, "audit"));
        assert!(!remove_field(&mut value, "audit"));
        assert_eq!(redact_field(&mut value, "ssn", &json!("***")), 2);
        assert!(set_field(&mut value, "/c/d", json!(1)));
        assert_eq!(get_field(&value, "/c/d"), Some(&json!(1)));
        assert_eq!(get_field(&value, "/a/b/0/ssn"), Some(&json!("***")));
    }

    #[test]
    fn subjects() {
        let bearer = |token: &str| -> HeaderList {
            vec![("Authorization".into(), format!("Bearer {token}"))]
        };
        assert_eq!(
            subject(&bearer(r#"{"active":true,"sub":"alice"}"#), None).as_deref(),
            Some("alice")
        );
        assert_eq!(
            subject(&bearer(r#"{"active":false,"sub":"alice"}"#), None),
            None
        );
        assert_eq!(subject(&bearer("opaque"), None).as_deref(), Some("opaque"));
        // {"sub":"bob"} as a JWT payload.
        assert_eq!(
            subject(&bearer("e30.eyJzdWIiOiJib2IifQ.sig"), None).as_deref(),
            Some("bob")
        );
        assert_eq!(
            subject(&vec![], Some(&json!({"sub": "carol"}))).as_deref(),
            Some("carol")
        );
        assert_eq!(subject(&vec![], None), None);
    }
}
