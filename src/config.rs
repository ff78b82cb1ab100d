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
    /// A JSON object with exactly these fields: unknown keys are refused and a
    /// `null` inside counts as absent, as at the top level. Errors name the
    /// field `<object>.<field>`.
    Object(&'static [FieldSpec]),
    /// A JSON array of HTTP header names ([`is_token`]), at most `max_items`,
    /// none twice (compared case-insensitively); [`parse`] lowercases them.
    HeaderList {
        max_items: usize,
    },
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
    /// The default of a [`FieldKind::HeaderList`].
    List(&'static [&'static str]),
}

/// One configuration field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// Bounds of the `cache` object's fields.
pub const MAX_CACHE_TTL_SECS: i64 = 86_400;
pub const MAX_CACHE_ENTRIES: i64 = 100_000;
pub const MAX_CACHE_KEY_HEADERS: usize = 16;

/// The `cache` fields that select a part of the request for the cache key
/// (`key_query` only refines `key_path`). An enabled cache needs one of them
/// true, or [`CACHE_KEY_HEADER_LIST`] non-empty; an absent or null part takes
/// its default. `gen-schema` renders the same rule into both schemas.
pub const CACHE_KEY_FLAGS: &[&str] = &["key_method", "key_path", "key_client_ip", "key_body"];
/// The `cache` field listing the headers that are part of the cache key.
pub const CACHE_KEY_HEADER_LIST: &str = "key_headers";
/// The reason an enabled cache whose key selects nothing is refused (field `cache`).
pub const CACHE_KEY_SELECTS_NOTHING: &str =
    "the cache key selects nothing: every request would share one decision";
/// The reason a header list names a header twice, followed by the (lower-case) name.
pub const DUPLICATE_HEADER_NAME: &str =
    "must not contain a header name twice (header names are case-insensitive): ";
/// The reason a header name is refused (also `validate_header_name` in schema.lua).
pub const INVALID_HEADER_NAME: &str =
    "must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)";

/// Kong's Prometheus label patterns for this filter's metrics (`metrics.label_patterns`
/// of meta.json, in this order): `(label, pattern)`, the pattern's first group is the
/// text removed from the metric name, the second the label's value.
pub const METRIC_LABEL_PATTERNS: &[(&str, &str)] = &[
    ("outcome", "(_outcome=([a-z_]+))"),
    ("endpoint", "(_endpoint=([a-z]+))"),
    ("result", "(_result=([a-z_]+))"),
    ("reason", "(_reason=([a-z_]+))"),
];

/// A field of the `cache` object: optional, with a default, filter-only.
const fn cache_field(
    name: &'static str,
    kind: FieldKind,
    default: Default,
    description: &'static str,
) -> FieldSpec {
    FieldSpec {
        name,
        kind,
        required: false,
        default: Some(default),
        lua: None,
        referenceable: false,
        secret: false,
        description,
    }
}

/// The fields of the `cache` object.
pub const CACHE_FIELDS: &[FieldSpec] = &[
    cache_field(
        "enabled",
        FieldKind::Boolean,
        Default::Boolean(false),
        "Turn the decision cache on (it is opt-in). It is used only with enable_response_hook = false \
         and mode = enforce; otherwise every request still goes to the policy server.",
    ),
    cache_field(
        "ttl_seconds",
        FieldKind::Integer { min: 1, max: MAX_CACHE_TTL_SECS },
        Default::Integer(60),
        "Longest time in seconds a decision is reused. The policy reply's own Cache-Control \
         (max-age, s-maxage) can only shorten it; no-store, no-cache, private or max-age=0 means \
         the decision is not stored.",
    ),
    cache_field(
        "max_entries",
        FieldKind::Integer { min: 1, max: MAX_CACHE_ENTRIES },
        Default::Integer(10_000),
        "Most decisions kept, per worker; when the cache is full the least recently used entry \
         is evicted.",
    ),
    cache_field(
        "stale_if_error_seconds",
        FieldKind::Integer { min: 0, max: MAX_CACHE_TTL_SECS },
        Default::Integer(0),
        "How long in seconds after expiry a cached allow may still be served when the policy \
         server is unreachable, times out or answers 5xx (0 = never).",
    ),
    cache_field(
        "cache_denies",
        FieldKind::Boolean,
        Default::Boolean(false),
        "Also cache denies: the policy's deny response is replayed to later requests with the \
         same key. false = only allows are cached.",
    ),
    cache_field(
        "key_method",
        FieldKind::Boolean,
        Default::Boolean(true),
        "The request method is part of the cache key.",
    ),
    cache_field(
        "key_path",
        FieldKind::Boolean,
        Default::Boolean(true),
        "The request path is part of the cache key.",
    ),
    cache_field(
        "key_query",
        FieldKind::Boolean,
        Default::Boolean(true),
        "The query string is part of the cache key (only when key_path is true).",
    ),
    cache_field(
        "key_headers",
        FieldKind::HeaderList { max_items: MAX_CACHE_KEY_HEADERS },
        Default::List(&["authorization"]),
        "Names of the request headers whose values are part of the cache key (case-insensitive, \
         each at most once). The default keeps the decisions of different credentials apart.",
    ),
    cache_field(
        "key_client_ip",
        FieldKind::Boolean,
        Default::Boolean(false),
        "The client's IP address is part of the cache key.",
    ),
    cache_field(
        "key_body",
        FieldKind::Boolean,
        Default::Boolean(false),
        "A SHA-256 of the request body is part of the cache key; without it, requests with a \
         body are never cached.",
    ),
];

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
    FieldSpec {
        name: "cache",
        kind: FieldKind::Object(CACHE_FIELDS),
        required: false,
        default: None,
        lua: None,
        referenceable: false,
        secret: false,
        description: "Decision cache, in memory per worker: a request whose key matches an earlier one gets \
                      that decision without a sideband call. The key parts are hashed with SHA-256 together \
                      with the configuration's identity; the request's key material is never stored in clear.",
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
    /// The decision cache (`cache.enabled`), or `None` when it is off.
    pub cache: Option<CacheConfig>,
    /// From the SHA-256 of the configuration bytes: part of every cache key,
    /// so two configurations never share a cached decision.
    pub identity: crate::cache::KeySalt,
}

/// The `cache` object, validated. Header names are lower case, without
/// duplicates, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    pub ttl_secs: u32,
    pub max_entries: usize,
    pub stale_if_error_secs: u32,
    pub cache_denies: bool,
    pub key_method: bool,
    pub key_path: bool,
    pub key_query: bool,
    pub key_headers: Vec<String>,
    pub key_client_ip: bool,
    pub key_body: bool,
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
        if let Some(cache) = &self.cache {
            lines.push((log::Level::Info, cache.describe()));
            let mut unused = Vec::new();
            if self.enable_response_hook {
                unused.push(
                    "enable_response_hook is true (the response hook needs a sideband call for \
                     each response)",
                );
            }
            if self.shadow {
                unused.push("mode is shadow (shadow mode evaluates every request)");
            }
            if !unused.is_empty() {
                lines.push((
                    log::Level::Warn,
                    format!(
                        "cache.enabled is true but the decision cache is not used: {}",
                        unused.join(" and ")
                    ),
                ));
            }
        }
        lines
    }
}

impl CacheConfig {
    /// One line naming the settings and the key's parts (header names, never
    /// values).
    fn describe(&self) -> String {
        let mut key: Vec<String> = Vec::new();
        if self.key_method {
            key.push("method".into());
        }
        if self.key_path {
            key.push(
                if self.key_query {
                    "path and query"
                } else {
                    "path"
                }
                .into(),
            );
        }
        if !self.key_headers.is_empty() {
            key.push(format!("headers {}", self.key_headers.join(", ")));
        }
        if self.key_client_ip {
            key.push("client ip".into());
        }
        if self.key_body {
            key.push("body (SHA-256)".into());
        }
        format!(
            "decision cache configured: ttl {} s (the policy's Cache-Control can shorten it), \
             at most {} entries per worker, stale-if-error {}, denies {}; key: {} \
             (hashed with SHA-256 with the configuration's identity)",
            self.ttl_secs,
            self.max_entries,
            if self.stale_if_error_secs == 0 {
                "off".to_string()
            } else {
                format!("{} s", self.stale_if_error_secs)
            },
            if self.cache_denies {
                "cached"
            } else {
                "not cached"
            },
            key.join("; "),
        )
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
    spec_in(FIELDS, name)
}

fn spec_in(specs: &'static [FieldSpec], name: &str) -> Option<&'static FieldSpec> {
    specs.iter().find(|f| f.name == name)
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
    let fields = check_fields(&obj, FIELDS, "")?;
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
            INVALID_HEADER_NAME,
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
        return Err(ConfigError::field("fail_open_header", INVALID_HEADER_NAME));
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
    let cache = match fields.get("cache") {
        Some(Value::Object(c)) => cache_config(c)?,
        _ => None,
    };
    let endpoint = |call| Endpoint::new(&service_url, call, &secret_header_name, &shared_secret);
    let (request_endpoint, response_endpoint) = (endpoint(Call::Request), endpoint(Call::Response));
    Ok(Config {
        shadow: text_or_default("mode") == "shadow",
        failure_policy,
        sideband_authority: service_url.authority(),
        request_endpoint,
        response_endpoint,
        cache,
        identity: {
            use sha2::{Digest, Sha256};
            crate::cache::KeySalt::new(&Sha256::digest(bytes).into())
        },
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

/// The `cache` object, already checked by [`check_fields`] (present, non-null
/// fields only; header names lower case and unique): `None` unless `enabled`.
fn cache_config(c: &Map<String, Value>) -> Result<Option<CacheConfig>, ConfigError> {
    let default = |name: &str| spec_in(CACHE_FIELDS, name).and_then(|f| f.default);
    let flag = |name: &str| -> bool {
        c.get(name)
            .and_then(Value::as_bool)
            .unwrap_or(matches!(default(name), Some(Default::Boolean(true))))
    };
    let int = |name: &str| -> i64 {
        c.get(name)
            .and_then(Value::as_i64)
            .or(match default(name) {
                Some(Default::Integer(i)) => Some(i),
                _ => None,
            })
            .unwrap_or(0)
    };
    if !flag("enabled") {
        return Ok(None);
    }
    let key_headers: Vec<String> = match c.get(CACHE_KEY_HEADER_LIST) {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => match default(CACHE_KEY_HEADER_LIST) {
            Some(Default::List(names)) => names.iter().map(|n| n.to_ascii_lowercase()).collect(),
            _ => Vec::new(),
        },
    };
    if !CACHE_KEY_FLAGS.iter().any(|f| flag(f)) && key_headers.is_empty() {
        return Err(ConfigError::field("cache", CACHE_KEY_SELECTS_NOTHING));
    }
    let to_u32 = |v: i64| u32::try_from(v).unwrap_or(u32::MAX);
    Ok(Some(CacheConfig {
        ttl_secs: to_u32(int("ttl_seconds")),
        max_entries: usize::try_from(int("max_entries")).unwrap_or(usize::MAX),
        stale_if_error_secs: to_u32(int("stale_if_error_seconds")),
        cache_denies: flag("cache_denies"),
        key_method: flag("key_method"),
        key_path: flag("key_path"),
        key_query: flag("key_query"),
        key_headers,
        key_client_ip: flag("key_client_ip"),
        key_body: flag("key_body"),
    }))
}

/// Generic checks from `specs` (`FIELDS` or an object's fields): unknown fields,
/// required fields, types and bounds. `null` counts as absent (Konnect and Kong
/// store unset optional fields as null). Returns the present, non-null fields;
/// a header list lower case. Errors name a field `<prefix><name>`.
fn check_fields(
    obj: &Map<String, Value>,
    specs: &'static [FieldSpec],
    prefix: &str,
) -> Result<Map<String, Value>, ConfigError> {
    let name = |f: &str| format!("{prefix}{f}");
    if let Some(unknown) = obj.keys().find(|k| spec_in(specs, k).is_none()) {
        return Err(ConfigError::field(&name(unknown), "unknown field"));
    }
    let mut present = Map::new();
    for f in specs {
        let value = match obj.get(f.name) {
            None | Some(Value::Null) => {
                if f.required {
                    return Err(ConfigError::field(&name(f.name), "required field missing"));
                }
                continue;
            }
            Some(v) => v,
        };
        let err = |reason: String| ConfigError::field(&name(f.name), reason);
        let checked = match f.kind {
            FieldKind::String { .. } | FieldKind::Rule(_) => match value {
                Value::String(s) if s.is_empty() => return Err(err("must not be empty".into())),
                Value::String(s) => {
                    if let FieldKind::Rule(rule) = f.kind {
                        (rule.check)(s).map_err(err)?;
                    }
                    value.clone()
                }
                _ => return Err(err("expected a string".into())),
            },
            FieldKind::Integer { min, max } => {
                let Some(i) = value.as_i64().filter(|_| value.is_i64() || value.is_u64()) else {
                    return Err(err("expected an integer".into()));
                };
                if i < min || i > max {
                    return Err(err(format!("must be between {min} and {max}, got {i}")));
                }
                value.clone()
            }
            FieldKind::Boolean => {
                if !value.is_boolean() {
                    return Err(err("expected a boolean".into()));
                }
                value.clone()
            }
            FieldKind::Object(fields) => match value {
                Value::Object(o) => {
                    Value::Object(check_fields(o, fields, &format!("{}.", name(f.name)))?)
                }
                _ => return Err(err("expected an object".into())),
            },
            FieldKind::HeaderList { max_items } => {
                Value::Array(header_list(value, max_items).map_err(err)?)
            }
        };
        present.insert(f.name.to_string(), checked);
    }
    Ok(present)
}

/// A [`FieldKind::HeaderList`] value: the names, lower case, in the order given.
fn header_list(value: &Value, max_items: usize) -> Result<Vec<Value>, String> {
    let Value::Array(items) = value else {
        return Err("expected an array of header names".into());
    };
    if items.len() > max_items {
        return Err(format!(
            "must hold at most {max_items} header names, got {}",
            items.len()
        ));
    }
    let mut names: Vec<Value> = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            return Err("expected an array of header names".into());
        };
        if s.is_empty() {
            return Err("header names must not be empty".into());
        }
        if !is_token(s) {
            return Err(INVALID_HEADER_NAME.into());
        }
        let lower = s.to_ascii_lowercase();
        if names.iter().any(|n| n.as_str() == Some(lower.as_str())) {
            return Err(format!("{DUPLICATE_HEADER_NAME}{lower}"));
        }
        names.push(Value::String(lower));
    }
    Ok(names)
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

    fn cache(body: &str) -> Result<Option<CacheConfig>, ConfigError> {
        cfg(&format!(r#""enable_response_hook":false,"cache":{body}"#)).map(|c| c.cache)
    }

    fn cache_err(body: &str) -> ConfigError {
        cache(body).unwrap_err()
    }

    #[test]
    fn cache_defaults() {
        assert_eq!(cfg("").unwrap().cache, None);
        assert_eq!(cache("null").unwrap(), None);
        assert_eq!(cache("{}").unwrap(), None);
        assert_eq!(cache(r#"{"enabled":false}"#).unwrap(), None);
        assert_eq!(cache(r#"{"enabled":null}"#).unwrap(), None);
        let c = cache(r#"{"enabled":true}"#).unwrap().unwrap();
        assert_eq!(
            c,
            CacheConfig {
                ttl_secs: 60,
                max_entries: 10_000,
                stale_if_error_secs: 0,
                cache_denies: false,
                key_method: true,
                key_path: true,
                key_query: true,
                key_headers: vec!["authorization".into()],
                key_client_ip: false,
                key_body: false,
            }
        );
        // Konnect writes null for every unset field: the defaults apply.
        let nulls = CACHE_FIELDS
            .iter()
            .filter(|f| f.name != "enabled")
            .map(|f| format!(r#""{}":null"#, f.name))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            cache(&format!(r#"{{"enabled":true,{nulls}}}"#)).unwrap(),
            Some(c)
        );
    }

    /// What Kong and Konnect store for a plugin without `cache`: the record filled
    /// with every default (schema.lua declares it `required = true`).
    #[test]
    fn cache_record_filled_with_defaults_is_accepted() {
        let mut record = Map::new();
        for f in CACHE_FIELDS {
            let v = match f.default.unwrap() {
                Default::Integer(i) => Value::from(i),
                Default::Boolean(b) => Value::from(b),
                Default::Text(t) => Value::from(t),
                Default::List(l) => Value::from(l.to_vec()),
            };
            record.insert(f.name.into(), v);
        }
        let body = Value::Object(record.clone()).to_string();
        assert_eq!(cache(&body).unwrap(), None);
        record.insert("enabled".into(), Value::Bool(true));
        let body = Value::Object(record).to_string();
        assert_eq!(cache(&body).unwrap(), cache(r#"{"enabled":true}"#).unwrap());
    }

    #[test]
    fn cache_every_field() {
        let c = cache(
            r#"{"enabled":true,"ttl_seconds":86400,"max_entries":100000,"stale_if_error_seconds":30,
                "cache_denies":true,"key_method":false,"key_path":true,"key_query":false,
                "key_headers":["Authorization","X-Tenant-ID"],"key_client_ip":true,"key_body":true}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.ttl_secs, 86_400);
        assert_eq!(c.max_entries, 100_000);
        assert_eq!(c.stale_if_error_secs, 30);
        assert!(c.cache_denies && !c.key_method && c.key_path && !c.key_query);
        assert_eq!(c.key_headers, ["authorization", "x-tenant-id"]);
        assert!(c.key_client_ip && c.key_body);
    }

    #[test]
    fn cache_errors_name_the_inner_field() {
        for (body, field) in [
            (r#"{"enabled":true,"bogus":1}"#, "cache.bogus"),
            (r#"{"ttl":60}"#, "cache.ttl"),
            (r#"{"ttl_seconds":0}"#, "cache.ttl_seconds"),
            (r#"{"ttl_seconds":86401}"#, "cache.ttl_seconds"),
            (r#"{"ttl_seconds":"60"}"#, "cache.ttl_seconds"),
            (r#"{"max_entries":0}"#, "cache.max_entries"),
            (r#"{"max_entries":100001}"#, "cache.max_entries"),
            (
                r#"{"stale_if_error_seconds":-1}"#,
                "cache.stale_if_error_seconds",
            ),
            (r#"{"enabled":"yes"}"#, "cache.enabled"),
            (r#"{"cache_denies":1}"#, "cache.cache_denies"),
            (r#"{"key_headers":"authorization"}"#, "cache.key_headers"),
            (r#"{"key_headers":[1]}"#, "cache.key_headers"),
            (r#"{"key_headers":[""]}"#, "cache.key_headers"),
            (r#"{"key_headers":["x y"]}"#, "cache.key_headers"),
            (r#""on""#, "cache"),
            ("[]", "cache"),
        ] {
            let e = cache_err(body);
            assert_eq!(e.field.as_deref(), Some(field), "{body}: {e}");
        }
        assert_eq!(cache_err(r#"{"bogus":1}"#).reason, "unknown field");
        assert_eq!(cache_err(r#""on""#).reason, "expected an object");
        assert_eq!(
            cache_err(r#"{"key_headers":["x y"]}"#).reason,
            INVALID_HEADER_NAME
        );
        // Errors come from the inner checks even when the cache is off.
        assert!(cache(r#"{"enabled":false,"ttl_seconds":0}"#).is_err());
    }

    #[test]
    fn cache_header_names_lower_case_and_unique() {
        let c = cache(r#"{"enabled":true,"key_headers":["X-API-Key","Cookie"]}"#)
            .unwrap()
            .unwrap();
        assert_eq!(c.key_headers, ["x-api-key", "cookie"]);
        for dup in [r#"["a","a"]"#, r#"["Authorization","authorization"]"#] {
            let e = cache_err(&format!(r#"{{"enabled":true,"key_headers":{dup}}}"#));
            assert_eq!(e.field.as_deref(), Some("cache.key_headers"));
            assert!(e.reason.starts_with(DUPLICATE_HEADER_NAME), "{}", e.reason);
        }
        let sixteen: Vec<String> = (0..16).map(|i| format!("\"h{i}\"")).collect();
        let c = cache(&format!(
            r#"{{"enabled":true,"key_headers":[{}]}}"#,
            sixteen.join(",")
        ))
        .unwrap()
        .unwrap();
        assert_eq!(c.key_headers.len(), 16);
        let e = cache_err(&format!(
            r#"{{"enabled":true,"key_headers":[{},"h16"]}}"#,
            sixteen.join(",")
        ));
        assert_eq!(e.field.as_deref(), Some("cache.key_headers"));
    }

    #[test]
    fn cache_key_must_select_something() {
        let nothing = r#""key_method":false,"key_path":false,"key_headers":[]"#;
        let e = cache_err(&format!(r#"{{"enabled":true,{nothing}}}"#));
        assert_eq!(e.field.as_deref(), Some("cache"));
        assert_eq!(e.reason, CACHE_KEY_SELECTS_NOTHING);
        // key_query alone selects nothing: it only refines the path.
        assert!(cache(&format!(r#"{{"enabled":true,{nothing},"key_query":true}}"#)).is_err());
        // Disabled, the key is not checked.
        assert_eq!(
            cache(&format!(r#"{{"enabled":false,{nothing}}}"#)).unwrap(),
            None
        );
        // Null parts take their (selecting) defaults.
        assert!(
            cache(r#"{"enabled":true,"key_method":false,"key_path":null,"key_headers":[]}"#)
                .unwrap()
                .is_some()
        );
        for part in CACHE_KEY_FLAGS {
            let mut v: Value =
                serde_json::from_str(&format!(r#"{{"enabled":true,{nothing}}}"#)).unwrap();
            v[part] = Value::Bool(true);
            assert!(cache(&v.to_string()).unwrap().is_some(), "{part}");
        }
        let only_headers = cache(
            r#"{"enabled":true,"key_method":false,"key_path":false,"key_headers":["authorization"]}"#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(only_headers.key_headers, ["authorization"]);
        let only_body = cache(
            r#"{"enabled":true,"key_method":false,"key_path":false,"key_headers":[],"key_body":true}"#,
        )
        .unwrap()
        .unwrap();
        assert!(only_body.key_body);
        let only_ip = cache(
            r#"{"enabled":true,"key_method":false,"key_path":false,"key_headers":[],"key_client_ip":true}"#,
        )
        .unwrap()
        .unwrap();
        assert!(only_ip.key_client_ip);
    }

    #[test]
    fn cache_announcement() {
        let lines = |extra: &str| {
            cfg(extra)
                .unwrap()
                .announcement()
                .into_iter()
                .skip(1)
                .collect::<Vec<_>>()
        };
        assert!(lines(r#""enable_response_hook":false"#).is_empty());
        let on = lines(
            r#""enable_response_hook":false,"cache":{"enabled":true,"key_headers":["Authorization","X-Tenant"],"key_body":true}"#,
        );
        assert_eq!(on.len(), 1, "{on:?}");
        let (level, line) = &on[0];
        assert_eq!(*level, log::Level::Info);
        for part in [
            "ttl 60 s",
            "10000 entries",
            "stale-if-error off",
            "denies not cached",
            "method",
            "path and query",
            "headers authorization, x-tenant",
            "body",
        ] {
            assert!(line.contains(part), "{part}: {line}");
        }
        assert!(!line.contains("client ip"), "{line}");

        // The response hook (on by default) and shadow mode: configured, not used.
        let hook = lines(r#""cache":{"enabled":true}"#);
        assert_eq!(hook.len(), 2, "{hook:?}");
        assert_eq!(hook[1].0, log::Level::Warn);
        assert!(hook[1].1.contains("enable_response_hook"), "{}", hook[1].1);
        assert!(!hook[1].1.contains("shadow"), "{}", hook[1].1);
        let c = cfg(r#""cache":{"enabled":true}"#).unwrap();
        assert!(c.cache.is_some(), "the exchange checks the hook itself");
        let shadow =
            lines(r#""enable_response_hook":false,"mode":"shadow","cache":{"enabled":true}"#);
        assert_eq!(shadow.len(), 2, "{shadow:?}");
        assert_eq!(shadow[1].0, log::Level::Warn);
        assert!(shadow[1].1.contains("mode is shadow"), "{}", shadow[1].1);
        assert!(
            cfg(r#""enable_response_hook":false,"mode":"shadow","cache":{"enabled":true}"#)
                .unwrap()
                .cache
                .is_some()
        );
        // Disabled: nothing announced.
        assert!(lines(r#""cache":{"enabled":false}"#).is_empty());
    }

    #[test]
    fn announcement_never_contains_the_secret() {
        for extra in [
            "",
            r#""cache":{"enabled":true,"key_headers":["CLIENT-TOKEN","authorization"],"key_client_ip":true,"stale_if_error_seconds":5,"cache_denies":true}"#,
            r#""enable_response_hook":false,"mode":"shadow","cache":{"enabled":true}"#,
        ] {
            for (_, line) in cfg(extra).unwrap().announcement() {
                assert!(!line.contains("s3cr3t"), "{line}");
            }
        }
    }

    #[test]
    fn metric_label_patterns_have_two_groups() {
        for (label, pattern) in METRIC_LABEL_PATTERNS {
            assert!(
                pattern.starts_with(&format!("(_{label}=(")),
                "{label}: {pattern}"
            );
            assert_eq!(pattern.matches('(').count(), 2, "{pattern}");
        }
    }

    #[test]
    fn secret_never_debug_printed() {
        let c = cfg("").unwrap();
        assert!(!format!("{c:?}").contains("s3cr3t"));
    }
}
