//! The policy file format: parsing and validation.
//!
//! See `docs/policy-server.md` for the format with examples. Parsing is done in
//! two steps so that every error can say where it is: the top level first, then
//! each rule on its own, then each part of a rule (`match`, `deny`, `modify`).

use std::fmt;
use std::marker::PhantomData;
use std::path::Path;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// Default name of the header carrying the shared secret.
pub const DEFAULT_SECRET_HEADER: &str = "CLIENT-TOKEN";

/// An error in a policy file: where it is and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// e.g. `request_rules[2] "deny-admin" .match`, or `line 3 column 5`.
    pub location: String,
    pub message: String,
}

impl PolicyError {
    fn new(location: impl Into<String>, message: impl Into<String>) -> PolicyError {
        PolicyError {
            location: location.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "policy error at {}: {}", self.location, self.message)
    }
}

impl std::error::Error for PolicyError {}

// ---------------------------------------------------------------------------
// Small value types
// ---------------------------------------------------------------------------

/// A JSON object read into a list, keeping the order of the file.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderedMap<T>(pub Vec<(String, T)>);

impl<T> Default for OrderedMap<T> {
    fn default() -> Self {
        OrderedMap(Vec::new())
    }
}

impl<T> OrderedMap<T> {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &T)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OrderedMap<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for MapVisitor<T> {
            type Value = OrderedMap<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some((key, value)) = access.next_entry::<String, T>()? {
                    entries.push((key, value));
                }
                Ok(OrderedMap(entries))
            }
        }
        deserializer.deserialize_map(MapVisitor(PhantomData))
    }
}

/// A header value in a rule: one string or a list of strings (several header lines).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(value) => vec![value.clone()],
            OneOrMany::Many(values) => values.clone(),
        }
    }
}

/// One status code or a list of them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum StatusList {
    One(u16),
    Many(Vec<u16>),
}

impl StatusList {
    pub fn contains(&self, status: u16) -> bool {
        match self {
            StatusList::One(one) => *one == status,
            StatusList::Many(many) => many.contains(&status),
        }
    }

    fn all(&self) -> Vec<u16> {
        match self {
            StatusList::One(one) => vec![*one],
            StatusList::Many(many) => many.clone(),
        }
    }
}

/// How the server gets the request back in the response phase
/// (PingAuthorize's `request-context-method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContextMethod {
    /// The allow reply carries an opaque `state`; the gateway sends it back.
    #[default]
    State,
    /// No `state`; the gateway sends the original request as `request`.
    Request,
    /// Nothing: response rules cannot see the original request.
    None,
}

/// What happens to a request that no rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultDecision {
    #[default]
    Allow,
    Deny,
}

/// A fixed-window rate limit over all sideband calls.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Calls allowed per window.
    pub max_requests: u32,
    /// Window length in milliseconds (default 1000).
    #[serde(default = "default_window_ms")]
    pub window_ms: u64,
    /// `Retry-After` value sent with the 429: absent = seconds until the window
    /// ends; `"none"` = no header; anything else is sent verbatim (e.g. an HTTP-date).
    #[serde(default)]
    pub retry_after: Option<String>,
}

fn default_window_ms() -> u64 {
    1000
}

// ---------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------

/// Conditions of a request rule. Every condition given must hold; an empty
/// match matches every request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    /// Glob on the URL path (`*` = any characters, including `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// Allowed methods (case-insensitive). Empty = any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header name → glob on any of its values (`"*"` = present).
    #[serde(default)]
    pub headers: OrderedMap<String>,
    /// Headers that must not be present.
    #[serde(default)]
    pub headers_absent: Vec<String>,
    /// Query parameter name → glob on its decoded value (`"*"` = present).
    #[serde(default)]
    pub query: OrderedMap<String>,
    /// Glob on the subject of the bearer token (see the docs).
    #[serde(default)]
    pub subject: Option<String>,
    /// `true`: a usable bearer token is present; `false`: none is.
    #[serde(default)]
    pub authenticated: Option<bool>,
    /// JSON body field (name or JSON pointer) → value it must equal.
    #[serde(default)]
    pub body_fields: OrderedMap<Value>,
}

/// Conditions of a response rule.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseMatch {
    /// Glob on the request's URL path (from the response payload's `url`).
    #[serde(default)]
    pub path: Option<String>,
    /// The request's methods (from the payload's `method`). Empty = any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Upstream status(es).
    #[serde(default)]
    pub status: Option<StatusList>,
    /// Upstream response header name → glob on any of its values.
    #[serde(default)]
    pub response_headers: OrderedMap<String>,
    /// Upstream response headers that must not be present.
    #[serde(default)]
    pub response_headers_absent: Vec<String>,
    /// Original request header name → glob (needs the request context).
    #[serde(default)]
    pub request_headers: OrderedMap<String>,
    /// Glob on the requester's subject (needs the request context).
    #[serde(default)]
    pub subject: Option<String>,
    /// Requester authenticated or not (needs the request context).
    #[serde(default)]
    pub authenticated: Option<bool>,
    /// The requester's subject is listed (comma-separated) in this response header.
    #[serde(default)]
    pub subject_in_response_header: Option<String>,
    /// JSON response body field (name or JSON pointer) → value it must equal.
    #[serde(default)]
    pub body_fields: OrderedMap<Value>,
}

/// A synthetic answer: a deny (request rules) or a replacement response (response rules).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenySpec {
    /// Status code for the client (sent as the string `response_code`).
    pub status: u16,
    /// `response_status`; default: the upper-case standard reason phrase.
    #[serde(default)]
    pub reason: Option<String>,
    /// Response headers (name → value or list of values).
    #[serde(default)]
    pub headers: OrderedMap<OneOrMany>,
    /// Body: a string is sent as is; any other JSON value is serialised (and
    /// `content-type: application/json` is added unless `headers` has one).
    #[serde(default)]
    pub body: Option<Value>,
}

/// Changes to the request before it is forwarded.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestModify {
    #[serde(default)]
    pub set_method: Option<String>,
    /// New URL path (must start with `/`).
    #[serde(default)]
    pub set_path: Option<String>,
    /// New raw query string (without `?`; `""` removes the query).
    #[serde(default)]
    pub set_query: Option<String>,
    /// Query parameters to set (replacing existing ones of that name).
    #[serde(default)]
    pub set_query_params: OrderedMap<String>,
    #[serde(default)]
    pub remove_query_params: Vec<String>,
    /// Old name → new name.
    #[serde(default)]
    pub rename_query_params: OrderedMap<String>,
    /// Replace every value of these headers (or add them). `${subject}` in a
    /// value is replaced by the requester's subject.
    #[serde(default)]
    pub set_headers: OrderedMap<OneOrMany>,
    /// Append header lines (existing values are kept).
    #[serde(default)]
    pub add_headers: OrderedMap<OneOrMany>,
    /// Remove headers (by omission from the reply).
    #[serde(default)]
    pub remove_headers: Vec<String>,
    /// Replace the whole body.
    #[serde(default)]
    pub set_body: Option<String>,
    /// Omit `body` from the reply (the gateway then clears the body).
    #[serde(default)]
    pub remove_body: bool,
    /// JSON body fields (name or JSON pointer) to remove.
    #[serde(default)]
    pub remove_body_fields: Vec<String>,
    /// JSON body fields (name or JSON pointer) to set.
    #[serde(default)]
    pub set_body_fields: OrderedMap<Value>,
}

/// Changes to the upstream response before the gateway returns it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseModify {
    #[serde(default)]
    pub set_status: Option<u16>,
    #[serde(default)]
    pub set_headers: OrderedMap<OneOrMany>,
    #[serde(default)]
    pub add_headers: OrderedMap<OneOrMany>,
    #[serde(default)]
    pub remove_headers: Vec<String>,
    #[serde(default)]
    pub set_body: Option<String>,
    #[serde(default)]
    pub remove_body_fields: Vec<String>,
    #[serde(default)]
    pub set_body_fields: OrderedMap<Value>,
    /// JSON fields to redact: a plain name redacts that key at any depth, a
    /// JSON pointer (starting with `/`) redacts one place.
    #[serde(default)]
    pub redact_fields: Vec<String>,
    /// Replacement for redacted values (default `"***"`).
    #[serde(default)]
    pub redact_with: Option<Value>,
}

/// What a request rule does when it matches.
#[derive(Debug, Clone, PartialEq)]
pub enum RequestAction {
    /// Forward (with the changes of earlier `modify` rules) and stop.
    Allow,
    /// Answer the client with this response and stop.
    Deny(DenySpec),
    /// Change the request and go on with the next rules (unless `final`).
    Modify(RequestModify),
}

/// What a response rule does when it matches.
#[derive(Debug, Clone, PartialEq)]
pub enum ResponseAction {
    Allow,
    Deny(DenySpec),
    Modify(ResponseModify),
}

/// A rule of `request_rules`.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRule {
    pub name: String,
    pub matcher: RequestMatch,
    pub action: RequestAction,
    /// Stop after this rule even when it only modifies.
    pub stop: bool,
    /// `Cache-Control` header of the sideband reply when this rule matches
    /// (a later matching rule with its own value wins).
    pub cache_control: Option<String>,
}

/// A rule of `response_rules`.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponseRule {
    pub name: String,
    pub matcher: ResponseMatch,
    pub action: ResponseAction,
    pub stop: bool,
    /// As [`RequestRule::cache_control`].
    pub cache_control: Option<String>,
}

// ---------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------

/// A parsed and validated policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Header carrying the shared secret (case-insensitive), default `CLIENT-TOKEN`.
    pub secret_header_name: String,
    /// Every accepted secret (several for rotation).
    pub shared_secrets: Vec<String>,
    pub request_context_method: ContextMethod,
    /// Larger sideband request bodies get 413.
    pub request_limit_bytes: Option<usize>,
    pub rate_limit: Option<RateLimit>,
    pub default_request_decision: DefaultDecision,
    /// `Cache-Control` header of every decision reply no matching rule
    /// gives one (none by default).
    pub cache_control: Option<String>,
    pub request_rules: Vec<RequestRule>,
    pub response_rules: Vec<ResponseRule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    description: Option<String>,
    #[serde(default = "default_secret_header")]
    secret_header_name: String,
    shared_secrets: Vec<String>,
    #[serde(default)]
    request_context_method: ContextMethod,
    #[serde(default)]
    request_limit_bytes: Option<usize>,
    #[serde(default)]
    rate_limit: Option<RateLimit>,
    #[serde(default)]
    default_request_decision: DefaultDecision,
    #[serde(default)]
    cache_control: Option<String>,
    #[serde(default)]
    request_rules: Vec<Value>,
    #[serde(default)]
    response_rules: Vec<Value>,
}

fn default_secret_header() -> String {
    DEFAULT_SECRET_HEADER.to_string()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, rename = "match")]
    matcher: Option<Value>,
    #[serde(default)]
    allow: Option<Value>,
    #[serde(default)]
    deny: Option<Value>,
    #[serde(default)]
    modify: Option<Value>,
    #[serde(default, rename = "final")]
    stop: bool,
    #[serde(default)]
    cache_control: Option<String>,
}

impl Policy {
    /// A policy that accepts `secret` and allows everything unchanged.
    pub fn allow_all(secret: &str) -> Policy {
        Policy {
            secret_header_name: DEFAULT_SECRET_HEADER.to_string(),
            shared_secrets: vec![secret.to_string()],
            request_context_method: ContextMethod::State,
            request_limit_bytes: None,
            rate_limit: None,
            default_request_decision: DefaultDecision::Allow,
            cache_control: None,
            request_rules: Vec::new(),
            response_rules: Vec::new(),
        }
    }

    /// Reads a policy file.
    pub fn from_file(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            PolicyError::new(
                path.display().to_string(),
                format!("cannot read the file: {e}"),
            )
        })?;
        Policy::from_json(&text).map_err(|mut error| {
            error.location = format!("{}: {}", path.display(), error.location);
            error
        })
    }

    /// Parses and validates a policy from JSON text.
    pub fn from_json(text: &str) -> Result<Policy, PolicyError> {
        let value: Value = serde_json::from_str(text).map_err(|e| {
            PolicyError::new(
                format!("line {} column {}", e.line(), e.column()),
                format!("not valid JSON: {e}"),
            )
        })?;
        if !value.is_object() {
            return Err(PolicyError::new(
                "top level",
                "a policy must be a JSON object",
            ));
        }
        let file: PolicyFile = serde_json::from_value(value)
            .map_err(|e| PolicyError::new("top level", e.to_string()))?;
        let _ = file.description;

        let mut request_rules = Vec::new();
        for (index, raw) in file.request_rules.into_iter().enumerate() {
            request_rules.push(parse_request_rule(index, raw)?);
        }
        let mut response_rules = Vec::new();
        for (index, raw) in file.response_rules.into_iter().enumerate() {
            response_rules.push(parse_response_rule(index, raw)?);
        }
        let policy = Policy {
            secret_header_name: file.secret_header_name,
            shared_secrets: file.shared_secrets,
            request_context_method: file.request_context_method,
            request_limit_bytes: file.request_limit_bytes,
            rate_limit: file.rate_limit,
            default_request_decision: file.default_request_decision,
            cache_control: file.cache_control,
            request_rules,
            response_rules,
        };
        policy.validate()?;
        Ok(policy)
    }

    /// Checks the values that the JSON types alone cannot check.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if !is_token(&self.secret_header_name) {
            return Err(PolicyError::new(
                "secret_header_name",
                format!("{:?} is not a valid header name", self.secret_header_name),
            ));
        }
        if self.shared_secrets.is_empty() {
            return Err(PolicyError::new(
                "shared_secrets",
                "at least one shared secret is needed",
            ));
        }
        for (index, secret) in self.shared_secrets.iter().enumerate() {
            if secret.is_empty() || secret.contains(['\r', '\n']) {
                return Err(PolicyError::new(
                    format!("shared_secrets[{index}]"),
                    "a secret must be a non-empty single-line string",
                ));
            }
        }
        if let Some(limit) = &self.rate_limit {
            if limit.max_requests == 0 || limit.window_ms == 0 {
                return Err(PolicyError::new(
                    "rate_limit",
                    "max_requests and window_ms must be at least 1",
                ));
            }
        }
        validate_cache_control("cache_control", self.cache_control.as_deref())?;
        for (index, rule) in self.request_rules.iter().enumerate() {
            let at = rule_location("request_rules", index, &rule.name);
            validate_cache_control(
                &format!("{at}.cache_control"),
                rule.cache_control.as_deref(),
            )?;
            validate_methods(&at, &rule.matcher.methods)?;
            validate_field_paths(
                &at,
                "match.body_fields",
                rule.matcher.body_fields.iter().map(|(k, _)| k),
            )?;
            match &rule.action {
                RequestAction::Allow => {}
                RequestAction::Deny(deny) => validate_deny(&at, deny)?,
                RequestAction::Modify(modify) => validate_request_modify(&at, modify)?,
            }
        }
        for (index, rule) in self.response_rules.iter().enumerate() {
            let at = rule_location("response_rules", index, &rule.name);
            validate_cache_control(
                &format!("{at}.cache_control"),
                rule.cache_control.as_deref(),
            )?;
            validate_methods(&at, &rule.matcher.methods)?;
            validate_field_paths(
                &at,
                "match.body_fields",
                rule.matcher.body_fields.iter().map(|(k, _)| k),
            )?;
            if let Some(statuses) = &rule.matcher.status {
                for status in statuses.all() {
                    validate_status(&format!("{at}.match.status"), status)?;
                }
            }
            match &rule.action {
                ResponseAction::Allow => {}
                ResponseAction::Deny(deny) => validate_deny(&at, deny)?,
                ResponseAction::Modify(modify) => validate_response_modify(&at, modify)?,
            }
        }
        Ok(())
    }
}

fn rule_location(list: &str, index: usize, name: &str) -> String {
    format!("{list}[{index}] {name:?}")
}

fn parse_rule_parts(
    list: &str,
    index: usize,
    raw: Value,
) -> Result<(String, String, RawRule), PolicyError> {
    let fallback = format!("{list}[{index}]");
    if !raw.is_object() {
        return Err(PolicyError::new(fallback, "a rule must be a JSON object"));
    }
    let name_hint = raw
        .get("name")
        .and_then(Value::as_str)
        .map(|n| rule_location(list, index, n))
        .unwrap_or_else(|| fallback.clone());
    let rule: RawRule =
        serde_json::from_value(raw).map_err(|e| PolicyError::new(&name_hint, e.to_string()))?;
    let _ = &rule.description;
    let name = rule.name.clone().unwrap_or(fallback);
    let at = rule_location(list, index, &name);
    let actions = [&rule.allow, &rule.deny, &rule.modify]
        .iter()
        .filter(|a| a.is_some())
        .count();
    if actions != 1 {
        return Err(PolicyError::new(
            at,
            "a rule needs exactly one of \"allow\", \"deny\" or \"modify\"",
        ));
    }
    if let Some(allow) = &rule.allow {
        let empty_object = allow.as_object().is_some_and(|o| o.is_empty());
        if !(empty_object || *allow == Value::Bool(true)) {
            return Err(PolicyError::new(
                format!("{at}.allow"),
                "\"allow\" takes `true` or `{}`",
            ));
        }
    }
    Ok((name, at, rule))
}

fn part<T: for<'de> Deserialize<'de> + Default>(
    at: &str,
    field: &str,
    value: Option<Value>,
) -> Result<T, PolicyError> {
    match value {
        None | Some(Value::Null) => Ok(T::default()),
        Some(value) => serde_json::from_value(value)
            .map_err(|e| PolicyError::new(format!("{at}.{field}"), e.to_string())),
    }
}

fn parse_deny(at: &str, value: Value) -> Result<DenySpec, PolicyError> {
    serde_json::from_value(value).map_err(|e| PolicyError::new(format!("{at}.deny"), e.to_string()))
}

fn parse_request_rule(index: usize, raw: Value) -> Result<RequestRule, PolicyError> {
    let (name, at, rule) = parse_rule_parts("request_rules", index, raw)?;
    let matcher: RequestMatch = part(&at, "match", rule.matcher)?;
    let action = if let Some(deny) = rule.deny {
        RequestAction::Deny(parse_deny(&at, deny)?)
    } else if let Some(modify) = rule.modify {
        RequestAction::Modify(part(&at, "modify", Some(modify))?)
    } else {
        RequestAction::Allow
    };
    Ok(RequestRule {
        name,
        matcher,
        action,
        stop: rule.stop,
        cache_control: rule.cache_control,
    })
}

fn parse_response_rule(index: usize, raw: Value) -> Result<ResponseRule, PolicyError> {
    let (name, at, rule) = parse_rule_parts("response_rules", index, raw)?;
    let matcher: ResponseMatch = part(&at, "match", rule.matcher)?;
    let action = if let Some(deny) = rule.deny {
        ResponseAction::Deny(parse_deny(&at, deny)?)
    } else if let Some(modify) = rule.modify {
        ResponseAction::Modify(part(&at, "modify", Some(modify))?)
    } else {
        ResponseAction::Allow
    };
    Ok(ResponseRule {
        name,
        matcher,
        action,
        stop: rule.stop,
        cache_control: rule.cache_control,
    })
}

/// An HTTP token (header names, methods).
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

fn validate_status(at: &str, status: u16) -> Result<(), PolicyError> {
    if (100..=599).contains(&status) {
        Ok(())
    } else {
        Err(PolicyError::new(
            at,
            format!("status {status} is not between 100 and 599"),
        ))
    }
}

fn validate_methods(at: &str, methods: &[String]) -> Result<(), PolicyError> {
    for (index, method) in methods.iter().enumerate() {
        if !is_token(method) {
            return Err(PolicyError::new(
                format!("{at}.match.methods[{index}]"),
                format!("{method:?} is not a valid method"),
            ));
        }
    }
    Ok(())
}

fn validate_header_names<'a>(
    at: &str,
    field: &str,
    names: impl Iterator<Item = &'a String>,
) -> Result<(), PolicyError> {
    for name in names {
        if !is_token(name) {
            return Err(PolicyError::new(
                format!("{at}.{field}"),
                format!("{name:?} is not a valid header name"),
            ));
        }
    }
    Ok(())
}

fn validate_header_values(
    at: &str,
    field: &str,
    headers: &OrderedMap<OneOrMany>,
) -> Result<(), PolicyError> {
    validate_header_names(at, field, headers.iter().map(|(k, _)| k))?;
    for (name, values) in headers.iter() {
        if values.values().iter().any(|v| v.contains(['\r', '\n'])) {
            return Err(PolicyError::new(
                format!("{at}.{field}.{name}"),
                "header values cannot contain line breaks",
            ));
        }
    }
    Ok(())
}

/// A `Cache-Control` value: a non-empty header value (no line breaks or
/// other control characters but tab).
fn validate_cache_control(at: &str, value: Option<&str>) -> Result<(), PolicyError> {
    let Some(value) = value else {
        return Ok(());
    };
    if value.trim().is_empty() {
        return Err(PolicyError::new(
            at,
            "an empty Cache-Control value; leave \"cache_control\" out to send none",
        ));
    }
    if value.chars().any(|c| c.is_control() && c != '\t') {
        return Err(PolicyError::new(
            at,
            "header values cannot contain line breaks or control characters",
        ));
    }
    Ok(())
}

/// Field paths are a plain name, or a JSON pointer (`/a/b`).
fn validate_field_paths<'a>(
    at: &str,
    field: &str,
    paths: impl Iterator<Item = &'a String>,
) -> Result<(), PolicyError> {
    for path in paths {
        if path.is_empty() || path == "/" {
            return Err(PolicyError::new(
                format!("{at}.{field}"),
                format!("{path:?} is not a field name or JSON pointer"),
            ));
        }
    }
    Ok(())
}

fn validate_deny(at: &str, deny: &DenySpec) -> Result<(), PolicyError> {
    validate_status(&format!("{at}.deny.status"), deny.status)?;
    validate_header_values(at, "deny.headers", &deny.headers)
}

fn validate_request_modify(at: &str, modify: &RequestModify) -> Result<(), PolicyError> {
    if let Some(method) = &modify.set_method {
        if !is_token(method) {
            return Err(PolicyError::new(
                format!("{at}.modify.set_method"),
                format!("{method:?} is not a valid method"),
            ));
        }
    }
    if let Some(path) = &modify.set_path {
        if !path.starts_with('/') || path.contains(['?', '#', ' ']) {
            return Err(PolicyError::new(
                format!("{at}.modify.set_path"),
                format!("{path:?} must start with '/' and contain no '?', '#' or space"),
            ));
        }
    }
    if modify.set_body.is_some() && modify.remove_body {
        return Err(PolicyError::new(
            format!("{at}.modify"),
            "set_body and remove_body cannot be used together",
        ));
    }
    validate_header_values(at, "modify.set_headers", &modify.set_headers)?;
    validate_header_values(at, "modify.add_headers", &modify.add_headers)?;
    validate_header_names(at, "modify.remove_headers", modify.remove_headers.iter())?;
    validate_field_paths(
        at,
        "modify.remove_body_fields",
        modify.remove_body_fields.iter(),
    )?;
    validate_field_paths(
        at,
        "modify.set_body_fields",
        modify.set_body_fields.iter().map(|(k, _)| k),
    )
}

fn validate_response_modify(at: &str, modify: &ResponseModify) -> Result<(), PolicyError> {
    if let Some(status) = modify.set_status {
        validate_status(&format!("{at}.modify.set_status"), status)?;
    }
    validate_header_values(at, "modify.set_headers", &modify.set_headers)?;
    validate_header_values(at, "modify.add_headers", &modify.add_headers)?;
    validate_header_names(at, "modify.remove_headers", modify.remove_headers.iter())?;
    validate_field_paths(
        at,
        "modify.remove_body_fields",
        modify.remove_body_fields.iter(),
    )?;
    validate_field_paths(at, "modify.redact_fields", modify.redact_fields.iter())?;
    validate_field_paths(
        at,
        "modify.set_body_fields",
        modify.set_body_fields.iter().map(|(k, _)| k),
    )
}

impl fmt::Display for ContextMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ContextMethod::State => "state",
            ContextMethod::Request => "request",
            ContextMethod::None => "none",
        })
    }
}
