//! Filter configuration: the JSON object Kong passes to `on_configure`.
//!
//! [`FIELDS`] is the single source of truth for the configuration surface: the
//! parser below validates against it, and the schema generator
//! (`cargo run -p ping-auth-harness --bin gen-schema`) turns it into
//! `schema/ping_auth.meta.json` (Kong) and `schema/schema.lua` (Konnect).
//! The first seven fields are the Lua `ping-auth` 1.2.0 fields with the same
//! names, types and defaults, so an existing plugin configuration works as is.

use serde_json::{Map, Value};
use std::fmt;

/// The JSON Schema `pattern` both schemas use for URL fields. [`parse_url`]
/// accepts exactly the strings this pattern accepts (the schema fixtures test it).
pub const URL_PATTERN: &str = concat!(
    r"^[Hh][Tt][Tt][Pp][Ss]?://",
    r"([A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])",
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?",
    r#"([/?][!"$-~]*)?$(?!\n)"#
);

/// The value kind of a configuration field and its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// A non-empty string; `url` means it must match [`URL_PATTERN`].
    String {
        url: bool,
    },
    /// A JSON integer within `min..=max`.
    Integer {
        min: i64,
        max: i64,
    },
    Boolean,
}

/// A default value, rendered into both schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    Integer(i64),
    Boolean(bool),
}

/// One configuration field.
#[derive(Debug, Clone, Copy)]
pub struct FieldSpec {
    pub name: &'static str,
    pub kind: FieldKind,
    pub required: bool,
    pub default: Option<Default>,
    /// The same field in the Lua plugin, or `None` for a field this filter adds.
    pub lua: Option<&'static str>,
    /// Kong vault references (`{vault://...}`) are allowed (Konnect schema).
    pub referenceable: bool,
    /// Never printed in logs.
    pub secret: bool,
    pub description: &'static str,
}

/// Largest timeout accepted, in milliseconds (24 days: fits nginx timers and `i32`).
pub const MAX_TIMEOUT_MS: i64 = 2_147_483_647;
/// Default and bounds of `max_response_body_bytes`.
pub const DEFAULT_MAX_RESPONSE_BODY: i64 = 1024 * 1024;
pub const MAX_MAX_RESPONSE_BODY: i64 = 64 * 1024 * 1024;

pub const FIELDS: &[FieldSpec] = &[
    FieldSpec {
        name: "service_url",
        kind: FieldKind::String { url: true },
        required: true,
        default: None,
        lua: Some("service_url"),
        referenceable: false,
        secret: false,
        description: "Base URL of the policy provider (PingAuthorize, PingOne Authorize, PingAccess), \
                      without /sideband. http or https, host, optional port, path and query.",
    },
    FieldSpec {
        name: "shared_secret",
        kind: FieldKind::String { url: false },
        required: true,
        default: None,
        lua: Some("shared_secret"),
        referenceable: true,
        secret: true,
        description: "Shared secret sent in the secret_header_name header of every sideband call.",
    },
    FieldSpec {
        name: "secret_header_name",
        kind: FieldKind::String { url: false },
        required: true,
        default: None,
        lua: Some("secret_header_name"),
        referenceable: false,
        secret: false,
        description: "Name of the header that carries the shared secret (Ping products default to CLIENT-TOKEN).",
    },
    FieldSpec {
        name: "connection_timeout_ms",
        kind: FieldKind::Integer { min: 1, max: MAX_TIMEOUT_MS },
        required: false,
        default: Some(Default::Integer(10_000)),
        lua: Some("connection_timeout_ms"),
        referenceable: false,
        secret: false,
        description: "Timeout of each sideband call in milliseconds, applied by the host to connect, send and read separately.",
    },
    FieldSpec {
        name: "connection_keepAlive_ms",
        kind: FieldKind::Integer { min: 1, max: MAX_TIMEOUT_MS },
        required: false,
        default: Some(Default::Integer(60_000)),
        lua: Some("connection_keepAlive_ms"),
        referenceable: false,
        secret: false,
        description: "Accepted for compatibility; Kong's Wasm host opens one connection per sideband call (no keep-alive).",
    },
    FieldSpec {
        name: "verify_service_certificate",
        kind: FieldKind::Boolean,
        required: false,
        default: Some(Default::Boolean(true)),
        lua: Some("verify_service_certificate"),
        referenceable: false,
        secret: false,
        description: "Accepted for compatibility; certificate verification of sideband calls is the host's global \
                      wasm TLS setting (nginx_wasm_tls_verify_cert / _host / _trusted_certificate).",
    },
    FieldSpec {
        name: "enable_debug_logging",
        kind: FieldKind::Boolean,
        required: false,
        default: Some(Default::Boolean(false)),
        lua: Some("enable_debug_logging"),
        referenceable: false,
        secret: false,
        description: "Log each sideband exchange at debug level (secret and credential headers redacted, bodies cut).",
    },
    FieldSpec {
        name: "enable_response_hook",
        kind: FieldKind::Boolean,
        required: false,
        default: Some(Default::Boolean(true)),
        lua: None,
        referenceable: false,
        secret: false,
        description: "Send the upstream response to /sideband/response and answer with the policy's version. \
                      On Kong the filter then calls the upstream itself; false = request hook only, Kong proxies as usual.",
    },
    FieldSpec {
        name: "upstream_url",
        kind: FieldKind::String { url: true },
        required: false,
        default: None,
        lua: None,
        referenceable: false,
        secret: false,
        description: "Upstream for the response hook on hosts without Kong's router properties \
                      (kong.router.service). Inside Kong the routed service is used and this is ignored.",
    },
    FieldSpec {
        name: "upstream_timeout_ms",
        kind: FieldKind::Integer { min: 1, max: MAX_TIMEOUT_MS },
        required: false,
        default: None,
        lua: None,
        referenceable: false,
        secret: false,
        description: "Timeout of the response hook's upstream call in milliseconds. Default: the Kong service's \
                      longest connect/write/read timeout, else 60000.",
    },
    FieldSpec {
        name: "max_response_body_bytes",
        kind: FieldKind::Integer { min: 1, max: MAX_MAX_RESPONSE_BODY },
        required: false,
        default: Some(Default::Integer(DEFAULT_MAX_RESPONSE_BODY)),
        lua: None,
        referenceable: false,
        secret: false,
        description: "Largest upstream response body the response hook buffers and sends to the policy provider; \
                      a larger one is answered with 502 (never truncated).",
    },
];

/// Scheme of a URL field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed `http(s)://host[:port][/path][?query]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// Lower-cased host name, or an IPv6 literal with its brackets.
    pub host: String,
    /// Explicit port, or the scheme's default.
    pub port: u16,
    /// Raw path, `/` when absent.
    pub path: String,
    /// Raw query without `?`; empty when absent.
    pub query: String,
}

impl Url {
    /// `host:port`: the dispatch target and the `Host` header (port always shown, as in Lua).
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Path (and query) of a sideband endpoint: the service path, a `/` if it
    /// does not end with one, then `sideband/<endpoint>`, then the service query.
    pub fn sideband_path(&self, endpoint: &str) -> String {
        let mut p = self.path.clone();
        if !p.ends_with('/') {
            p.push('/');
        }
        p.push_str("sideband/");
        p.push_str(endpoint);
        if !self.query.is_empty() {
            p.push('?');
            p.push_str(&self.query);
        }
        p
    }
}

/// A string that never prints its value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Secret(value)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The validated configuration of one filter instance.
#[derive(Debug, Clone)]
pub struct Config {
    pub service_url: Url,
    pub shared_secret: Secret,
    pub secret_header_name: String,
    pub connection_timeout_ms: u32,
    pub connection_keepalive_ms: u32,
    pub verify_service_certificate: bool,
    pub enable_debug_logging: bool,
    pub enable_response_hook: bool,
    pub upstream_url: Option<Url>,
    pub upstream_timeout_ms: Option<u32>,
    pub max_response_body_bytes: usize,
}

/// Why a configuration was refused: the field (if one is at fault) and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: Option<String>,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "field '{}': {}", field, self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

impl ConfigError {
    fn field(name: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            field: Some(name.to_string()),
            reason: reason.into(),
        }
    }
}

fn spec(name: &str) -> Option<&'static FieldSpec> {
    FIELDS.iter().find(|f| f.name == name)
}

/// Parses and validates the configuration bytes Kong hands to `on_configure`.
pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ConfigError {
            field: None,
            reason: "no configuration given (service_url, shared_secret and secret_header_name are required)"
                .into(),
        });
    }
    let value: Value = serde_json::from_slice(bytes).map_err(|e| ConfigError {
        field: None,
        reason: format!("configuration is not valid JSON: {e}"),
    })?;
    let Value::Object(obj) = value else {
        return Err(ConfigError {
            field: None,
            reason: "configuration must be a JSON object".into(),
        });
    };
    let fields = check_fields(&obj)?;
    let get_str = |name: &str| -> Option<String> {
        match fields.get(name) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        }
    };
    let get_int = |name: &str| -> Option<i64> { fields.get(name).and_then(Value::as_i64) };
    let get_bool = |name: &str| -> Option<bool> { fields.get(name).and_then(Value::as_bool) };

    let service_url = {
        let raw = get_str("service_url").unwrap_or_default();
        parse_url(&raw).map_err(|r| ConfigError::field("service_url", r))?
    };
    let upstream_url = match get_str("upstream_url") {
        Some(raw) => Some(parse_url(&raw).map_err(|r| ConfigError::field("upstream_url", r))?),
        None => None,
    };
    let secret_header_name = get_str("secret_header_name").unwrap_or_default();
    if !is_token(&secret_header_name) {
        return Err(ConfigError::field(
            "secret_header_name",
            "must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
        ));
    }
    let shared_secret = get_str("shared_secret").unwrap_or_default();
    if shared_secret
        .bytes()
        .any(|b| b == b'\r' || b == b'\n' || b == 0)
    {
        return Err(ConfigError::field(
            "shared_secret",
            "must not contain CR, LF or NUL (it is sent as a header value)",
        ));
    }
    let int_or_default = |name: &str| -> i64 {
        get_int(name)
            .or_else(|| match spec(name).and_then(|s| s.default) {
                Some(Default::Integer(i)) => Some(i),
                _ => None,
            })
            .unwrap_or(0)
    };
    let bool_or_default = |name: &str| -> bool {
        get_bool(name)
            .or_else(|| match spec(name).and_then(|s| s.default) {
                Some(Default::Boolean(b)) => Some(b),
                _ => None,
            })
            .unwrap_or(false)
    };
    let to_u32 = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(Config {
        service_url,
        shared_secret: Secret::new(shared_secret),
        secret_header_name,
        connection_timeout_ms: to_u32(int_or_default("connection_timeout_ms")),
        connection_keepalive_ms: to_u32(int_or_default("connection_keepAlive_ms")),
        verify_service_certificate: bool_or_default("verify_service_certificate"),
        enable_debug_logging: bool_or_default("enable_debug_logging"),
        enable_response_hook: bool_or_default("enable_response_hook"),
        upstream_url,
        upstream_timeout_ms: get_int("upstream_timeout_ms").map(to_u32),
        max_response_body_bytes: usize::try_from(int_or_default("max_response_body_bytes"))
            .unwrap_or(usize::MAX),
    })
}

/// Generic checks from [`FIELDS`]: unknown fields, required fields, types and
/// bounds. `null` counts as absent (Konnect and Kong store unset optional fields
/// as null). Returns the present, non-null fields.
fn check_fields(obj: &Map<String, Value>) -> Result<Map<String, Value>, ConfigError> {
    if let Some(unknown) = obj.keys().find(|k| spec(k).is_none()) {
        return Err(ConfigError::field(unknown, "unknown field"));
    }
    let mut present = Map::new();
    for f in FIELDS {
        let value = match obj.get(f.name) {
            None | Some(Value::Null) => {
                if f.required {
                    return Err(ConfigError::field(f.name, "required field missing"));
                }
                continue;
            }
            Some(v) => v,
        };
        match f.kind {
            FieldKind::String { .. } => match value {
                Value::String(s) if s.is_empty() => {
                    return Err(ConfigError::field(f.name, "must not be empty"))
                }
                Value::String(_) => {}
                _ => return Err(ConfigError::field(f.name, "expected a string")),
            },
            FieldKind::Integer { min, max } => {
                let Some(i) = value.as_i64().filter(|_| value.is_i64() || value.is_u64()) else {
                    return Err(ConfigError::field(f.name, "expected an integer"));
                };
                if i < min || i > max {
                    return Err(ConfigError::field(
                        f.name,
                        format!("must be between {min} and {max}, got {i}"),
                    ));
                }
            }
            FieldKind::Boolean => {
                if !value.is_boolean() {
                    return Err(ConfigError::field(f.name, "expected a boolean"));
                }
            }
        }
        present.insert(f.name.to_string(), value.clone());
    }
    Ok(present)
}

/// True for an RFC 9110 token (a valid header name).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a URL field. Accepts exactly what [`URL_PATTERN`] accepts; the error
/// messages for scheme and host are the Lua plugin's.
pub fn parse_url(raw: &str) -> Result<Url, String> {
    let (scheme, rest) = match raw.find("://") {
        Some(i) => (raw.get(..i).unwrap_or(""), raw.get(i + 3..).unwrap_or("")),
        None => {
            return Err(if raw.to_ascii_lowercase().starts_with("http") {
                "URL must start with http:// or https://".into()
            } else {
                "URL scheme must be either 'http' or 'https'".into()
            })
        }
    };
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return Err("URL scheme must be either 'http' or 'https'".into()),
    };
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = rest.get(..auth_end).unwrap_or("");
    let tail = rest.get(auth_end..).unwrap_or("");
    if authority.is_empty() {
        return Err("URL host cannot be blank".into());
    }
    if authority.contains('@') {
        return Err("URL must not contain credentials (user@host)".into());
    }
    let (host, port) = split_host_port(authority)?;
    if tail.contains('#') {
        return Err("URL must not contain a fragment (#)".into());
    }
    if !tail.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "URL path and query must be printable ASCII without spaces (percent-encode other characters)".into(),
        );
    }
    let (path, query) = match tail.find('?') {
        Some(i) => (tail.get(..i).unwrap_or(""), tail.get(i + 1..).unwrap_or("")),
        None => (tail, ""),
    };
    Ok(Url {
        scheme,
        host: host.to_ascii_lowercase(),
        port: port.unwrap_or(scheme.default_port()),
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        query: query.into(),
    })
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority
            .find(']')
            .ok_or_else(|| "URL host has an unterminated IPv6 literal".to_string())?;
        let host = authority.get(..=close).unwrap_or("");
        let inner = host.get(1..host.len().saturating_sub(1)).unwrap_or("");
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err("URL host is not a valid IPv6 literal".into());
        }
        match authority.get(close + 1..).unwrap_or("") {
            "" => (host, None),
            p => match p.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err("URL host is followed by garbage".into()),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("URL host cannot be blank".into());
    }
    if !host.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
    {
        return Err("URL host may contain only letters, digits, '.', '-', '_' and '~'".into());
    }
    let port = match port {
        None => None,
        Some(p) => {
            let valid = !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && !p.starts_with('0');
            match p.parse::<u16>() {
                Ok(n) if valid && n > 0 => Some(n),
                _ => {
                    return Err(format!(
                        "URL port must be a number from 1 to 65535, got '{p}'"
                    ))
                }
            }
        }
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Result<Config, ConfigError> {
        let base = r#""service_url":"https://pdp:8443/","shared_secret":"s3cr3t","secret_header_name":"CLIENT-TOKEN""#;
        let sep = if extra.is_empty() { "" } else { "," };
        parse(format!("{{{base}{sep}{extra}}}").as_bytes())
    }

    #[test]
    fn defaults_match_lua() {
        let c = cfg("").unwrap();
        assert_eq!(c.connection_timeout_ms, 10_000);
        assert_eq!(c.connection_keepalive_ms, 60_000);
        assert!(c.verify_service_certificate);
        assert!(!c.enable_debug_logging);
        assert!(c.enable_response_hook);
        assert_eq!(c.max_response_body_bytes, 1024 * 1024);
        assert_eq!(c.service_url.authority(), "pdp:8443");
    }

    #[test]
    fn required_fields() {
        for field in ["service_url", "shared_secret", "secret_header_name"] {
            let mut v: Value = serde_json::from_str(
                r#"{"service_url":"https://pdp","shared_secret":"s","secret_header_name":"H"}"#,
            )
            .unwrap();
            v.as_object_mut().unwrap().remove(field);
            let e = parse(v.to_string().as_bytes()).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field));
            assert_eq!(e.reason, "required field missing");
        }
    }

    #[test]
    fn bounds_and_types() {
        let e = cfg(r#""connection_timeout_ms":0"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("connection_timeout_ms"));
        let e = cfg(r#""connection_keepAlive_ms":-1"#).unwrap_err();
        assert_eq!(e.field.as_deref(), Some("connection_keepAlive_ms"));
        assert!(cfg(r#""connection_timeout_ms":1.5"#).is_err());
        assert!(cfg(r#""connection_timeout_ms":"100""#).is_err());
        assert!(cfg(r#""enable_debug_logging":"yes""#).is_err());
        assert!(cfg(r#""bogus":1"#).is_err());
        assert!(cfg(r#""upstream_url":null"#).is_ok());
        assert_eq!(
            cfg(r#""connection_timeout_ms":30000"#)
                .unwrap()
                .connection_timeout_ms,
            30000
        );
    }

    #[test]
    fn url_messages_match_lua() {
        assert_eq!(
            parse_url("ftp://x").unwrap_err(),
            "URL scheme must be either 'http' or 'https'"
        );
        assert_eq!(
            parse_url("http://").unwrap_err(),
            "URL host cannot be blank"
        );
        let u = parse_url("HTTPS://PDP").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Https, "pdp", 443)
        );
        assert!(parse_url("https:/paz").is_err());
        assert!(parse_url("https://u:p@paz").is_err());
        assert!(parse_url("https://paz:0").is_err());
        assert!(parse_url("https://paz:65536").is_err());
        assert!(parse_url("https://paz:").is_err());
        assert_eq!(
            parse_url("http://[::1]:9000/x").unwrap().authority(),
            "[::1]:9000"
        );
    }

    #[test]
    fn sideband_path_join() {
        let p = |u: &str| parse_url(u).unwrap().sideband_path("request");
        assert_eq!(p("https://h:8443"), "/sideband/request");
        assert_eq!(p("https://h:8443/"), "/sideband/request");
        assert_eq!(p("https://h/base"), "/base/sideband/request");
        assert_eq!(p("https://h/base/"), "/base/sideband/request");
        assert_eq!(p("https://h//x"), "//x/sideband/request");
        assert_eq!(p("https://h/base?x=1"), "/base/sideband/request?x=1");
    }

    #[test]
    fn secret_never_debug_printed() {
        let c = cfg("").unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
