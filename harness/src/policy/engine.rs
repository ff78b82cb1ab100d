//! The decisions: what to answer to `/sideband/request` and `/sideband/response`.
//!
//! Pure functions over JSON values; the HTTP side lives in `policy.rs`.

use base64::Engine as _;
use serde_json::{json, Map, Value};

use super::config::{
    DefaultDecision, DenySpec, OneOrMany, OrderedMap, Policy, RequestAction, RequestMatch,
    RequestModify, ResponseAction, ResponseMatch, ResponseModify,
};
use super::util::{
    add_header, get_field, glob_match, header_matches, header_values, headers_from_json,
    headers_to_json, redact_field, remove_field, remove_header, set_field, set_header, subject,
    HeaderList, QueryPieces, UrlParts,
};
use crate::http::reason_phrase;

/// The kind of decision, as logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forwarded (or returned) unchanged.
    Allow,
    /// Forwarded (or returned) with changes.
    Modify,
    /// Answered with a synthetic response.
    Deny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "allow",
            Decision::Modify => "modify",
            Decision::Deny => "deny",
        }
    }
}

/// The result of evaluating the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub decision: Decision,
    /// Names of the rules that matched, in order (`default` for the default deny).
    pub rules: Vec<String>,
    /// The status the client will get (`None` for a forwarded request).
    pub status: Option<u16>,
    /// The JSON reply body.
    pub reply: Value,
    /// The `Cache-Control` header of the reply: the `cache_control` of the
    /// last matching rule that has one, else the policy's, else none.
    pub cache_control: Option<String>,
}

// ---------------------------------------------------------------------------
// Payloads
// ---------------------------------------------------------------------------

/// The body of a `/sideband/request` call (also what `request` / `state` carry).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestPayload {
    /// The whole JSON object as received.
    pub raw: Map<String, Value>,
    pub method: String,
    pub url: String,
    pub headers: HeaderList,
    /// `None` when the field was absent (body too large for the gateway to send).
    pub body: Option<String>,
}

impl RequestPayload {
    /// Reads and checks a request payload; the error names the bad field.
    pub fn parse(value: &Value) -> Result<RequestPayload, String> {
        let raw = value
            .as_object()
            .ok_or("the request payload must be a JSON object")?
            .clone();
        let method = string_field(&raw, "method")?;
        let url = string_field(&raw, "url")?;
        let headers = match raw.get("headers") {
            Some(headers) => headers_from_json(headers, "headers")?,
            None => return Err("`headers` is missing".to_string()),
        };
        let body = optional_string_field(&raw, "body")?;
        Ok(RequestPayload {
            raw,
            method,
            url,
            headers,
            body,
        })
    }

    fn url_parts(&self) -> UrlParts {
        UrlParts::parse(&self.url)
    }

    /// The requester's subject (see [`super::util::subject`]).
    pub fn subject(&self) -> Option<String> {
        subject(&self.headers, self.raw.get("access_token"))
    }

    fn body_json(&self) -> Option<Value> {
        self.body
            .as_deref()
            .and_then(|body| serde_json::from_str(body).ok())
    }
}

/// The body of a `/sideband/response` call.
#[derive(Debug, Clone, PartialEq)]
pub struct ResponsePayload {
    pub raw: Map<String, Value>,
    pub method: String,
    pub url: String,
    /// `response_code` (a string from ping-auth; a number is accepted too).
    pub status: u16,
    pub headers: HeaderList,
    pub body: Option<String>,
}

impl ResponsePayload {
    pub fn parse(value: &Value) -> Result<ResponsePayload, String> {
        let raw = value
            .as_object()
            .ok_or("the response payload must be a JSON object")?
            .clone();
        let method = string_field(&raw, "method")?;
        let url = string_field(&raw, "url")?;
        let status = match raw.get("response_code") {
            Some(Value::String(code)) => code.trim().parse::<u16>().ok(),
            Some(Value::Number(code)) => code.as_u64().and_then(|c| u16::try_from(c).ok()),
            _ => None,
        }
        .filter(|code| (100..=999).contains(code))
        .ok_or("`response_code` must be a status code (string or number)")?;
        let headers = match raw.get("headers") {
            Some(headers) => headers_from_json(headers, "headers")?,
            None => return Err("`headers` is missing".to_string()),
        };
        let body = optional_string_field(&raw, "body")?;
        Ok(ResponsePayload {
            raw,
            method,
            url,
            status,
            headers,
            body,
        })
    }
}

fn string_field(raw: &Map<String, Value>, name: &str) -> Result<String, String> {
    match raw.get(name) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(format!("`{name}` must be a string")),
        None => Err(format!("`{name}` is missing")),
    }
}

fn optional_string_field(raw: &Map<String, Value>, name: &str) -> Result<Option<String>, String> {
    match raw.get(name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(format!("`{name}` must be a string")),
    }
}

// ---------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------

/// Prefix of the opaque state strings this server makes.
const STATE_PREFIX: &str = "PAS1.";

/// Packs the original request into an opaque `state` string.
pub fn encode_state(request: &RequestPayload) -> String {
    let inner = json!({ "request": Value::Object(request.raw.clone()) });
    format!(
        "{STATE_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(inner.to_string())
    )
}

/// Recovers the original request from a `state` value.
pub fn decode_state(state: &Value) -> Result<RequestPayload, String> {
    let text = state.as_str().ok_or("`state` must be a string")?;
    let encoded = text
        .strip_prefix(STATE_PREFIX)
        .ok_or("`state` was not issued by this server")?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| "`state` is corrupt (bad base64)".to_string())?;
    let inner: Value =
        serde_json::from_slice(&bytes).map_err(|_| "`state` is corrupt (bad JSON)".to_string())?;
    let request = inner.get("request").ok_or("`state` is corrupt")?;
    RequestPayload::parse(request).map_err(|e| format!("`state` is corrupt: {e}"))
}

// ---------------------------------------------------------------------------
// Deny objects
// ---------------------------------------------------------------------------

/// The upper-case reason phrase used in `response_status`.
pub fn status_text(status: u16) -> String {
    reason_phrase(status).to_uppercase()
}

fn expand(value: &str, subject: Option<&str>) -> String {
    value.replace("${subject}", subject.unwrap_or_default())
}

/// A rule's header changes, in order: removals, replacements, additions.
fn change_headers(
    headers: &mut HeaderList,
    remove: &[String],
    set: &OrderedMap<OneOrMany>,
    add: &OrderedMap<OneOrMany>,
    subject: Option<&str>,
) {
    for name in remove {
        remove_header(headers, name);
    }
    for (name, values) in set.iter() {
        set_header(headers, name, &expanded_values(values, subject));
    }
    for (name, values) in add.iter() {
        add_header(headers, name, &expanded_values(values, subject));
    }
}

fn expanded_values(values: &OneOrMany, subject: Option<&str>) -> Vec<String> {
    values
        .values()
        .iter()
        .map(|value| expand(value, subject))
        .collect()
}

/// `{response_code, response_status, headers, body}` for a deny specification.
fn response_object(spec: &DenySpec, subject: Option<&str>) -> Value {
    let mut headers: HeaderList = Vec::new();
    for (name, values) in spec.headers.iter() {
        add_header(&mut headers, name, &expanded_values(values, subject));
    }
    let body = match &spec.body {
        None => String::new(),
        Some(Value::String(text)) => expand(text, subject),
        Some(other) => {
            if header_values(&headers, "content-type").is_empty() {
                headers.push(("content-type".to_string(), "application/json".to_string()));
            }
            other.to_string()
        }
    };
    json!({
        "response_code": spec.status.to_string(),
        "response_status": spec.reason.clone().unwrap_or_else(|| status_text(spec.status)),
        "headers": headers_to_json(&headers),
        "body": body,
    })
}

fn default_deny() -> DenySpec {
    DenySpec {
        status: 403,
        reason: None,
        headers: OrderedMap(vec![(
            "content-type".to_string(),
            OneOrMany::One("application/json".to_string()),
        )]),
        body: Some(json!({
            "code": "ACCESS_DENIED",
            "message": "No policy rule allows this request"
        })),
    }
}

// ---------------------------------------------------------------------------
// Request phase
// ---------------------------------------------------------------------------

fn body_fields_match(fields: &OrderedMap<Value>, body: Option<&Value>) -> bool {
    if fields.is_empty() {
        return true;
    }
    let Some(body) = body else {
        return false;
    };
    fields
        .iter()
        .all(|(path, expected)| get_field(body, path) == Some(expected))
}

fn methods_match(methods: &[String], method: &str) -> bool {
    methods.is_empty() || methods.iter().any(|m| m.eq_ignore_ascii_case(method))
}

fn request_matches(matcher: &RequestMatch, request: &RequestPayload) -> bool {
    let url = request.url_parts();
    if let Some(pattern) = &matcher.path {
        if !glob_match(pattern, url.match_path()) {
            return false;
        }
    }
    if !methods_match(&matcher.methods, &request.method) {
        return false;
    }
    for (name, pattern) in matcher.headers.iter() {
        if !header_matches(&request.headers, name, pattern) {
            return false;
        }
    }
    if matcher
        .headers_absent
        .iter()
        .any(|name| !header_values(&request.headers, name).is_empty())
    {
        return false;
    }
    if !matcher.query.is_empty() {
        let params = QueryPieces::parse(url.query.as_deref().unwrap_or_default()).decoded();
        for (name, pattern) in matcher.query.iter() {
            let found = params
                .iter()
                .any(|(key, value)| key == name && glob_match(pattern, value));
            if !found {
                return false;
            }
        }
    }
    if !subject_conditions_hold(
        matcher.subject.as_deref(),
        matcher.authenticated,
        request.subject().as_deref(),
    ) {
        return false;
    }
    body_fields_match(&matcher.body_fields, request.body_json().as_ref())
}

fn subject_conditions_hold(
    pattern: Option<&str>,
    authenticated: Option<bool>,
    subject: Option<&str>,
) -> bool {
    if let Some(wanted) = authenticated {
        if wanted != subject.is_some() {
            return false;
        }
    }
    match (pattern, subject) {
        (None, _) => true,
        (Some(pattern), Some(subject)) => glob_match(pattern, subject),
        (Some(_), None) => false,
    }
}

/// The request being built for forwarding.
struct Forward {
    method: String,
    url: UrlParts,
    url_changed: bool,
    headers: HeaderList,
    body: Option<String>,
}

fn apply_body_edits(
    body: &mut Option<String>,
    remove: &[String],
    set: &OrderedMap<Value>,
    redact: &[String],
    redact_with: &Value,
) {
    if remove.is_empty() && set.is_empty() && redact.is_empty() {
        return;
    }
    let Some(mut json) = body
        .as_deref()
        .and_then(|text| serde_json::from_str::<Value>(text).ok())
    else {
        return; // Not JSON (or absent): field edits do not apply.
    };
    let mut changed = false;
    for path in remove {
        changed |= remove_field(&mut json, path);
    }
    for (path, value) in set.iter() {
        changed |= set_field(&mut json, path, value.clone());
    }
    for path in redact {
        changed |= redact_field(&mut json, path, redact_with) > 0;
    }
    if changed {
        *body = Some(json.to_string());
    }
}

fn apply_request_modify(forward: &mut Forward, modify: &RequestModify, subject: Option<&str>) {
    if let Some(method) = &modify.set_method {
        forward.method = method.clone();
    }
    if let Some(path) = &modify.set_path {
        forward.url.path = path.clone();
        forward.url_changed = true;
    }
    if let Some(query) = &modify.set_query {
        forward.url.query = Some(query.clone());
        forward.url_changed = true;
    }
    let query_edits = !modify.set_query_params.is_empty()
        || !modify.remove_query_params.is_empty()
        || !modify.rename_query_params.is_empty();
    if query_edits {
        let mut pieces = QueryPieces::parse(forward.url.query.as_deref().unwrap_or_default());
        for name in &modify.remove_query_params {
            pieces.remove(name);
        }
        for (old, new) in modify.rename_query_params.iter() {
            pieces.rename(old, new);
        }
        for (name, value) in modify.set_query_params.iter() {
            pieces.set(name, &expand(value, subject));
        }
        forward.url.query = Some(pieces.to_query());
        forward.url_changed = true;
    }
    change_headers(
        &mut forward.headers,
        &modify.remove_headers,
        &modify.set_headers,
        &modify.add_headers,
        subject,
    );
    if let Some(body) = &modify.set_body {
        forward.body = Some(body.clone());
    }
    if modify.remove_body {
        forward.body = None;
    }
    apply_body_edits(
        &mut forward.body,
        &modify.remove_body_fields,
        &modify.set_body_fields,
        &[],
        &Value::Null,
    );
}

/// The allow reply: the request to forward, in the order PingAuthorize uses.
fn forward_reply(request: &RequestPayload, forward: &Forward) -> Value {
    let mut reply = Map::new();
    for name in ["source_ip", "source_port"] {
        if let Some(value) = request.raw.get(name) {
            reply.insert(name.to_string(), value.clone());
        }
    }
    reply.insert("method".to_string(), Value::String(forward.method.clone()));
    let url = if forward.url_changed {
        forward.url.to_url()
    } else {
        request.url.clone()
    };
    reply.insert("url".to_string(), Value::String(url));
    if let Some(body) = &forward.body {
        reply.insert("body".to_string(), Value::String(body.clone()));
    }
    reply.insert("headers".to_string(), headers_to_json(&forward.headers));
    for name in ["http_version", "client_certificate"] {
        if let Some(value) = request.raw.get(name) {
            reply.insert(name.to_string(), value.clone());
        }
    }
    Value::Object(reply)
}

/// Evaluates the request rules. The reply of an allow has no `state` yet.
pub fn decide_request(policy: &Policy, request: &RequestPayload) -> Outcome {
    let subject = request.subject();
    let mut forward = Forward {
        method: request.method.clone(),
        url: request.url_parts(),
        url_changed: false,
        headers: request.headers.clone(),
        body: request.body.clone(),
    };
    let mut rules = Vec::new();
    let mut cache_control = policy.cache_control.clone();
    let mut modified = false;
    let mut decided = false;
    for rule in &policy.request_rules {
        if !request_matches(&rule.matcher, request) {
            continue;
        }
        rules.push(rule.name.clone());
        if let Some(value) = &rule.cache_control {
            cache_control = Some(value.clone());
        }
        match &rule.action {
            RequestAction::Allow => {
                decided = true;
                break;
            }
            RequestAction::Deny(spec) => {
                return Outcome {
                    decision: Decision::Deny,
                    rules,
                    status: Some(spec.status),
                    reply: json!({ "response": response_object(spec, subject.as_deref()) }),
                    cache_control,
                };
            }
            RequestAction::Modify(modify) => {
                apply_request_modify(&mut forward, modify, subject.as_deref());
                modified = true;
                if rule.stop {
                    decided = true;
                    break;
                }
            }
        }
    }
    if !decided && policy.default_request_decision == DefaultDecision::Deny {
        rules.push("default".to_string());
        let spec = default_deny();
        return Outcome {
            decision: Decision::Deny,
            rules,
            status: Some(spec.status),
            reply: json!({ "response": response_object(&spec, subject.as_deref()) }),
            cache_control,
        };
    }
    Outcome {
        decision: if modified {
            Decision::Modify
        } else {
            Decision::Allow
        },
        rules,
        status: None,
        reply: forward_reply(request, &forward),
        cache_control,
    }
}

// ---------------------------------------------------------------------------
// Response phase
// ---------------------------------------------------------------------------

fn response_matches(
    matcher: &ResponseMatch,
    response: &ResponsePayload,
    context: Option<&RequestPayload>,
) -> bool {
    let url = UrlParts::parse(&response.url);
    if let Some(pattern) = &matcher.path {
        if !glob_match(pattern, url.match_path()) {
            return false;
        }
    }
    if !methods_match(&matcher.methods, &response.method) {
        return false;
    }
    if let Some(statuses) = &matcher.status {
        if !statuses.contains(response.status) {
            return false;
        }
    }
    for (name, pattern) in matcher.response_headers.iter() {
        if !header_matches(&response.headers, name, pattern) {
            return false;
        }
    }
    if matcher
        .response_headers_absent
        .iter()
        .any(|name| !header_values(&response.headers, name).is_empty())
    {
        return false;
    }
    let needs_context = !matcher.request_headers.is_empty()
        || matcher.subject.is_some()
        || matcher.authenticated.is_some()
        || matcher.subject_in_response_header.is_some();
    if needs_context {
        // Without a request context (method `none`) these conditions cannot hold.
        let Some(request) = context else {
            return false;
        };
        for (name, pattern) in matcher.request_headers.iter() {
            if !header_matches(&request.headers, name, pattern) {
                return false;
            }
        }
        let subject = request.subject();
        if !subject_conditions_hold(
            matcher.subject.as_deref(),
            matcher.authenticated,
            subject.as_deref(),
        ) {
            return false;
        }
        if let Some(header) = &matcher.subject_in_response_header {
            let Some(subject) = subject else {
                return false;
            };
            let listed = header_values(&response.headers, header)
                .iter()
                .flat_map(|value| value.split(','))
                .any(|name| name.trim() == subject);
            if !listed {
                return false;
            }
        }
    }
    let body = response
        .body
        .as_deref()
        .and_then(|text| serde_json::from_str::<Value>(text).ok());
    body_fields_match(&matcher.body_fields, body.as_ref())
}

/// The response being built for the client.
struct Returned {
    status: u16,
    status_changed: bool,
    headers: HeaderList,
    body: Option<String>,
}

fn apply_response_modify(returned: &mut Returned, modify: &ResponseModify, subject: Option<&str>) {
    if let Some(status) = modify.set_status {
        returned.status = status;
        returned.status_changed = true;
    }
    change_headers(
        &mut returned.headers,
        &modify.remove_headers,
        &modify.set_headers,
        &modify.add_headers,
        subject,
    );
    if let Some(body) = &modify.set_body {
        returned.body = Some(body.clone());
    }
    let redact_with = modify
        .redact_with
        .clone()
        .unwrap_or_else(|| Value::String("***".to_string()));
    apply_body_edits(
        &mut returned.body,
        &modify.remove_body_fields,
        &modify.set_body_fields,
        &modify.redact_fields,
        &redact_with,
    );
}

fn returned_reply(response: &ResponsePayload, returned: &Returned) -> Value {
    let given_status = response
        .raw
        .get("response_status")
        .and_then(Value::as_str)
        .filter(|text| !text.is_empty());
    let status_text = match given_status {
        Some(text) if !returned.status_changed => text.to_string(),
        _ => status_text(returned.status),
    };
    let mut reply = Map::new();
    reply.insert(
        "response_code".to_string(),
        Value::String(returned.status.to_string()),
    );
    reply.insert("response_status".to_string(), Value::String(status_text));
    reply.insert("headers".to_string(), headers_to_json(&returned.headers));
    if let Some(body) = &returned.body {
        reply.insert("body".to_string(), Value::String(body.clone()));
    }
    if let Some(version) = response.raw.get("http_version") {
        reply.insert("http_version".to_string(), version.clone());
    }
    Value::Object(reply)
}

/// Evaluates the response rules. `context` is the original request when the
/// request context method provides it.
pub fn decide_response(
    policy: &Policy,
    response: &ResponsePayload,
    context: Option<&RequestPayload>,
) -> Outcome {
    let subject = context.and_then(RequestPayload::subject);
    let mut returned = Returned {
        status: response.status,
        status_changed: false,
        headers: response.headers.clone(),
        body: response.body.clone(),
    };
    let mut rules = Vec::new();
    let mut cache_control = policy.cache_control.clone();
    let mut modified = false;
    for rule in &policy.response_rules {
        if !response_matches(&rule.matcher, response, context) {
            continue;
        }
        rules.push(rule.name.clone());
        if let Some(value) = &rule.cache_control {
            cache_control = Some(value.clone());
        }
        match &rule.action {
            ResponseAction::Allow => break,
            ResponseAction::Deny(spec) => {
                let mut reply = response_object(spec, subject.as_deref());
                if let (Some(object), Some(version)) =
                    (reply.as_object_mut(), response.raw.get("http_version"))
                {
                    object.insert("http_version".to_string(), version.clone());
                }
                return Outcome {
                    decision: Decision::Deny,
                    rules,
                    status: Some(spec.status),
                    reply,
                    cache_control,
                };
            }
            ResponseAction::Modify(modify) => {
                apply_response_modify(&mut returned, modify, subject.as_deref());
                modified = true;
                if rule.stop {
                    break;
                }
            }
        }
    }
    Outcome {
        decision: if modified {
            Decision::Modify
        } else {
            Decision::Allow
        },
        rules,
        status: Some(returned.status),
        reply: returned_reply(response, &returned),
        cache_control,
    }
}
