//! Filter configuration: the JSON object Kong passes to `on_configure`.
//!
//! [`FIELDS`] is the single source of truth for the configuration surface: the
//! parser below validates against it, and the schema generator
//! (`cargo run -p ping-auth-harness --bin gen-schema`) turns it into
//! `schema/ping_auth.meta.json` (Kong) and `schema/schema.lua` (Konnect).
//! The first seven fields are the Lua `ping-auth` 1.2.0 fields with the same
//! names, types and defaults, so an existing plugin configuration works as is.

use crate::failure::policy::{FailurePolicy, OnFailure};
use crate::failure::Call;
use crate::http::is_token;
use crate::protocol::Endpoint;
pub use crate::url::URL_PATTERN;
use crate::url::{parse_url, Url};
use serde_json::{Map, Value};
use std::fmt;

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
    /// A non-empty string that must follow `rule`.
    Rule(&'static Rule),
}

/// A text rule both schemas and [`parse`] apply: a JSON Schema `pattern`,
/// the Lua validator of `schema.lua` (by name) and the parser's own check.
#[derive(Debug)]
pub struct Rule {
    pub pattern: &'static str,
    pub lua_validator: &'static str,
    pub check: fn(&str) -> Result<(), String>,
}

/// Rules are told apart by their pattern.
impl PartialEq for Rule {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}

impl Eq for Rule {}

/// `mode`: `enforce` or `shadow`.
pub const MODE_RULE: Rule = Rule {
    pattern: r"^(enforce|shadow)$(?!\n)",
    lua_validator: "validate_mode",
    check: |v| match v {
        "enforce" | "shadow" => Ok(()),
        _ => Err("must be \"enforce\" or \"shadow\"".into()),
    },
};

/// `on_<failure class>`: `deny`, `deny:<status 400-599>` or `allow`.
pub const FAILURE_ACTION_RULE: Rule = Rule {
    pattern: r"^(allow|deny(:[45][0-9][0-9])?)$(?!\n)",
    lua_validator: "validate_failure_action",
    check: |v| OnFailure::parse(v).map(|_| ()),
};

/// `fail_open_methods`: upper-case method names separated by commas.
pub const METHODS_RULE: Rule = Rule {
    pattern: r"^ *[A-Z]+ *(, *[A-Z]+ *)*$(?!\n)",
    lua_validator: "validate_methods",
    check: |v| {
        if method_list(v).is_some() {
            Ok(())
        } else {
            Err(
                "must be upper-case method names separated by commas, e.g. \"GET,HEAD,OPTIONS\""
                    .into(),
            )
        }
    },
};

/// The methods of a `fail_open_methods` value; `None` when it is malformed.
pub fn method_list(v: &str) -> Option<Vec<String>> {
    v.split(',')
        .map(|m| {
            let m = m.trim_matches(' ');
            (!m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase())).then(|| m.to_string())
        })
        .collect()
}

/// A default value, rendered into both schemas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Default {
    Integer(i64),
    Boolean(bool),
    Text(&'static str),
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

/// The field of one failure class: `deny` (the default), `deny:<status>` or
/// `allow`.
macro_rules! on_failure_field {
    ($name:literal, $when:literal, $status:literal) => {
        FieldSpec {
            name: $name,
            kind: FieldKind::Rule(&FAILURE_ACTION_RULE),
            required: false,
            default: Some(Default::Text("deny")),
            lua: None,
            referenceable: false,
            secret: false,
            description: concat!(
                "When ",
                $when,
                ": deny (status ",
                $status,
                "), deny:<status> (400-599), or allow (the request goes on unchanged, for \
                 fail_open_methods only, marked with fail_open_header)."
            ),
        }
    };
}

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
    FieldSpec {
        name: "mode",
        kind: FieldKind::Rule(&MODE_RULE),
        required: false,
        default: Some(Default::Text("enforce")),
        lua: None,
        referenceable: false,
        secret: false,
        description: "enforce: the policy's decisions apply. shadow: the policy server is called as in \
                      enforce mode, but the client and the upstream see the original request and response \
                      whatever it answers; what would have happened is logged (one line per request).",
    },
    on_failure_field!(
        "on_unreachable",
        "the policy server cannot be reached, times out, or fails the TLS handshake",
        "502"
    ),
    on_failure_field!(
        "on_server_error",
        "the policy server answers 5xx",
        "502"
    ),
    on_failure_field!(
        "on_client_error",
        "the policy server answers 4xx other than 413 and 429 (e.g. 401 for a wrong shared secret)",
        "502"
    ),
    on_failure_field!(
        "on_malformed_reply",
        "the policy server's reply is not JSON or not a valid reply",
        "502"
    ),
    on_failure_field!(
        "on_rate_limited",
        "the policy server answers 429, or its back-off is running",
        "429"
    ),
    FieldSpec {
        name: "fail_open_methods",
        kind: FieldKind::Rule(&METHODS_RULE),
        required: false,
        default: Some(Default::Text("GET,HEAD,OPTIONS")),
        lua: None,
        referenceable: false,
        secret: false,
        description: "Methods an on_* = allow applies to, separated by commas; other methods are denied \
                      as with deny.",
    },
    FieldSpec {
        name: "fail_open_header",
        kind: FieldKind::String { url: false },
        required: false,
        default: Some(Default::Text("x-ping-auth-fail-open")),
        lua: None,
        referenceable: false,
        secret: false,
        description: "Header the upstream receives on a request let through by an on_* = allow; its value \
                      is the failure class. A client's own header of that name is removed.",
    },
];

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
    /// `mode: shadow`: decide, log, change nothing.
    pub shadow: bool,
    /// What each failure class of the policy server leads to.
    pub failure_policy: FailurePolicy,
    /// Compiled from the above once, for every request: `host:port` of the
    /// policy server (the dispatch target) and the two endpoints.
    pub sideband_authority: String,
    pub request_endpoint: Endpoint,
    pub response_endpoint: Endpoint,
}

impl Config {
    /// The lines `on_configure` logs: what applies, and the Lua options this
    /// host cannot honour per filter. Never the secret.
    pub fn announcement(&self) -> Vec<(log::Level, String)> {
        let mut lines = vec![(
            log::Level::Info,
            format!(
                "configured: sideband {}://{}{}, timeout {} ms, response hook {}; \
                 connection_keepAlive_ms is not applied (the host opens one connection per call); \
                 sideband TLS verification follows the host's global wasm TLS settings",
                self.service_url.scheme.as_str(),
                self.sideband_authority,
                self.request_endpoint.path,
                self.connection_timeout_ms,
                if self.enable_response_hook {
                    "on"
                } else {
                    "off"
                },
            ),
        )];
        if self.shared_secret.expose().starts_with("{vault://") {
            lines.push((
                log::Level::Warn,
                "shared_secret is an unresolved Kong vault reference ({vault://...}); the host passed \
                 it as is, so the policy provider will receive it literally and refuse it"
                    .into(),
            ));
        }
        if !self.verify_service_certificate {
            lines.push((
                log::Level::Warn,
                "verify_service_certificate=false is not applied per filter: Kong verifies sideband \
                 certificates unless nginx_wasm_tls_verify_cert/nginx_wasm_tls_verify_host are off"
                    .into(),
            ));
        }
        lines
    }
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
    let text_or_default = |name: &str| -> String {
        get_str(name)
            .or_else(|| match spec(name).and_then(|s| s.default) {
                Some(Default::Text(t)) => Some(t.to_string()),
                _ => None,
            })
            .unwrap_or_default()
    };
    let fail_open_header = text_or_default("fail_open_header").to_ascii_lowercase();
    if !is_token(&fail_open_header) {
        return Err(ConfigError::field(
            "fail_open_header",
            "must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
        ));
    }
    let on = |name: &str| {
        OnFailure::parse(&text_or_default(name)).map_err(|r| ConfigError::field(name, r))
    };
    let failure_policy = FailurePolicy {
        unreachable: on("on_unreachable")?,
        server_error: on("on_server_error")?,
        client_error: on("on_client_error")?,
        malformed_reply: on("on_malformed_reply")?,
        rate_limited: on("on_rate_limited")?,
        methods: method_list(&text_or_default("fail_open_methods")).unwrap_or_default(),
        marker_header: fail_open_header,
    };
    let endpoint = |call| Endpoint::new(&service_url, call, &secret_header_name, &shared_secret);
    let (request_endpoint, response_endpoint) = (endpoint(Call::Request), endpoint(Call::Response));
    Ok(Config {
        shadow: text_or_default("mode") == "shadow",
        failure_policy,
        sideband_authority: service_url.authority(),
        request_endpoint,
        response_endpoint,
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
            FieldKind::String { .. } | FieldKind::Rule(_) => match value {
                Value::String(s) if s.is_empty() => {
                    return Err(ConfigError::field(f.name, "must not be empty"))
                }
                Value::String(s) => {
                    if let FieldKind::Rule(rule) = f.kind {
                        (rule.check)(s).map_err(|r| ConfigError::field(f.name, r))?;
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::failure::policy::OnFailure;

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
    fn failure_policy_and_mode() {
        let c = cfg("").unwrap();
        assert!(!c.shadow);
        assert_eq!(c.failure_policy.server_error, OnFailure::Deny(None));
        assert_eq!(c.failure_policy.methods, ["GET", "HEAD", "OPTIONS"]);
        assert_eq!(c.failure_policy.marker_header, "x-ping-auth-fail-open");
        let c = cfg(r#""mode":"shadow","on_unreachable":"allow","on_server_error":"deny:503","fail_open_methods":" GET , POST","fail_open_header":"X-Open""#).unwrap();
        assert!(c.shadow);
        assert_eq!(c.failure_policy.unreachable, OnFailure::Allow);
        assert_eq!(c.failure_policy.server_error, OnFailure::Deny(Some(503)));
        assert_eq!(c.failure_policy.methods, ["GET", "POST"]);
        assert_eq!(c.failure_policy.marker_header, "x-open");
        for (bad, field) in [
            (r#""mode":"dry-run""#, "mode"),
            (r#""on_unreachable":"open""#, "on_unreachable"),
            (r#""on_rate_limited":"deny:200""#, "on_rate_limited"),
            (r#""fail_open_methods":"get""#, "fail_open_methods"),
            (r#""fail_open_methods":"GET,,HEAD""#, "fail_open_methods"),
            (r#""fail_open_header":"x open""#, "fail_open_header"),
        ] {
            assert_eq!(cfg(bad).unwrap_err().field.as_deref(), Some(field), "{bad}");
        }
    }

    #[test]
    fn secret_never_debug_printed() {
        let c = cfg("").unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
