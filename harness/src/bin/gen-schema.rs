//! Generates the filter's two configuration schemas from `ping_auth::config::FIELDS`:
//!
//! - `schema/ping_auth.meta.json`: Kong's filter metadata (`config_schema`, JSON Schema
//!   draft 4, validated by Kong with lua-resty-ljsonschema);
//! - `schema/schema.lua`: a Konnect custom-plugin schema named `ping_auth` with the same
//!   fields, defaults and validation (self-contained, no `require`).
//!
//! `gen-schema` writes both files; `gen-schema --check` writes nothing and exits 1 when
//! a committed file differs from what would be generated.
//!
//! `config::parse` checks two things that `FIELDS` has no slot for (the header name is
//! an HTTP token; the secret has no CR, LF or NUL): they are [`HEADER_NAME_PATTERN`] and
//! [`SECRET_PATTERN`] here and `validate_header_name` / `validate_secret` in the Lua.
//! A header list's items use the same pattern and validator; its names are unique
//! (`uniqueItems`, case-sensitive in JSON Schema; `validate_header_list`, case-insensitive
//! as the parser, in the Lua). The `cache` object's rule that an enabled cache's key
//! selects something (`config::CACHE_KEY_FLAGS`) is a `not` clause in meta.json and
//! `validate_cache` in the Lua, both rendered from the fields' defaults.
//! meta.json also carries Kong's Prometheus `metrics.label_patterns`
//! (`config::METRIC_LABEL_PATTERNS`).
//! `harness/tests/schema.rs` checks that both schemas and the parser agree on every
//! fixture in `schema/fixtures/`.

use ping_auth::config::{
    Default, FieldKind, FieldSpec, CACHE_KEY_FLAGS, CACHE_KEY_HEADER_LIST,
    CACHE_KEY_SELECTS_NOTHING, DUPLICATE_HEADER_NAME, FIELDS, METRIC_LABEL_PATTERNS, URL_PATTERN,
};
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `secret_header_name`: an RFC 9110 token (`config::is_token`). `$(?!\n)` because PCRE
/// (Kong) lets `$` match before a final newline.
const HEADER_NAME_PATTERN: &str = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$(?!\n)";
/// `shared_secret`: no CR, LF or NUL (it is sent as a header value).
const SECRET_PATTERN: &str = r"^[^\r\n\x00]+$(?!\n)";

const META_PATH: &str = "schema/ping_auth.meta.json";
const LUA_PATH: &str = "schema/schema.lua";

fn extra_pattern(name: &str) -> Option<&'static str> {
    match name {
        "secret_header_name" | "fail_open_header" => Some(HEADER_NAME_PATTERN),
        "shared_secret" => Some(SECRET_PATTERN),
        _ => None,
    }
}

fn lua_validator(f: &FieldSpec) -> Option<&'static str> {
    match (f.name, f.kind) {
        (_, FieldKind::String { url: true }) => Some("validate_url"),
        (_, FieldKind::Rule(rule)) => Some(rule.lua_validator),
        (_, FieldKind::HeaderList { .. }) => Some("validate_header_list"),
        ("cache", FieldKind::Object(_)) => Some("validate_cache"),
        ("secret_header_name" | "fail_open_header", _) => Some("validate_header_name"),
        ("shared_secret", _) => Some("validate_secret"),
        _ => None,
    }
}

fn default_json(d: Default) -> Value {
    match d {
        Default::Integer(i) => json!(i),
        Default::Boolean(b) => json!(b),
        Default::Text(t) => json!(t),
        Default::List(l) => json!(l),
    }
}

fn default_lua(d: Default) -> String {
    match d {
        Default::Integer(i) => i.to_string(),
        Default::Boolean(b) => b.to_string(),
        Default::Text(t) => lua_str(t),
        Default::List(l) => lua_list(l),
    }
}

/// A Lua sequence of strings: `{ "a", "b" }` (`{}` when empty).
fn lua_list(items: &[&str]) -> String {
    if items.is_empty() {
        return "{}".into();
    }
    let items: Vec<String> = items.iter().map(|i| lua_str(i)).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The `cache` field named `name`; gen-schema fails on a missing one rather than
/// render a rule that does not hold.
fn cache_field(fields: &'static [FieldSpec], name: &str) -> Result<&'static FieldSpec, String> {
    fields
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| format!("cache has no field {name}"))
}

fn default_flag(f: &FieldSpec) -> Result<bool, String> {
    match f.default {
        Some(Default::Boolean(b)) => Ok(b),
        _ => Err(format!("cache.{} must be a boolean with a default", f.name)),
    }
}

fn default_list(f: &FieldSpec) -> Result<&'static [&'static str], String> {
    match f.default {
        Some(Default::List(l)) => Ok(l),
        _ => Err(format!(
            "cache.{} must be a header list with a default",
            f.name
        )),
    }
}

/// The JSON Schema that matches exactly the `cache` objects whose key selects
/// nothing while enabled, for a `not`: `enabled` true, every key flag false and
/// the header list empty, an absent or null part counting as its default. `null` stays
/// last in an `enum`: lua-resty-ljsonschema joins a `null` member without its `or`.
fn selects_nothing_schema(fields: &'static [FieldSpec]) -> Result<Value, String> {
    let mut required: Vec<&str> = Vec::new();
    let mut props = Map::new();
    let enabled = cache_field(fields, "enabled")?;
    if default_flag(enabled)? {
        props.insert("enabled".into(), json!({ "enum": [true, null] }));
    } else {
        required.push("enabled");
        props.insert("enabled".into(), json!({ "enum": [true] }));
    }
    for name in CACHE_KEY_FLAGS {
        let f = cache_field(fields, name)?;
        if default_flag(f)? {
            required.push(f.name);
            props.insert(f.name.into(), json!({ "enum": [false] }));
        } else {
            props.insert(f.name.into(), json!({ "enum": [false, null] }));
        }
    }
    let list = cache_field(fields, CACHE_KEY_HEADER_LIST)?;
    if default_list(list)?.is_empty() {
        props.insert(
            list.name.into(),
            json!({ "type": ["array", "null"], "maxItems": 0 }),
        );
    } else {
        required.push(list.name);
        props.insert(list.name.into(), json!({ "type": "array", "maxItems": 0 }));
    }
    Ok(json!({
        "description": CACHE_KEY_SELECTS_NOTHING,
        "type": "object",
        "required": required,
        "properties": props,
    }))
}

/// The JSON Schema of one field. Optional fields also accept `null`: Kong and Konnect
/// store an unset optional field as null, and `config::parse` treats null as absent.
fn field_schema(f: &FieldSpec) -> Result<Value, String> {
    let base = match f.kind {
        FieldKind::String { .. } | FieldKind::Rule(_) => "string",
        FieldKind::Integer { .. } => "integer",
        FieldKind::Boolean => "boolean",
        FieldKind::Object(_) => "object",
        FieldKind::HeaderList { .. } => "array",
    };
    let mut s = Map::new();
    s.insert("description".into(), json!(f.description));
    s.insert(
        "type".into(),
        if f.required {
            json!(base)
        } else {
            json!([base, "null"])
        },
    );
    match f.kind {
        FieldKind::String { url } => {
            s.insert("minLength".into(), json!(1));
            if url {
                s.insert("pattern".into(), json!(URL_PATTERN));
            } else if let Some(p) = extra_pattern(f.name) {
                s.insert("pattern".into(), json!(p));
            }
        }
        FieldKind::Integer { min, max } => {
            s.insert("minimum".into(), json!(min));
            s.insert("maximum".into(), json!(max));
        }
        FieldKind::Boolean => {}
        FieldKind::Rule(rule) => {
            s.insert("minLength".into(), json!(1));
            s.insert("pattern".into(), json!(rule.pattern));
        }
        FieldKind::Object(fields) => {
            let required: Vec<&str> = fields
                .iter()
                .filter(|f| f.required)
                .map(|f| f.name)
                .collect();
            if !required.is_empty() {
                s.insert("required".into(), json!(required));
            }
            s.insert("additionalProperties".into(), json!(false));
            s.insert("properties".into(), Value::Object(properties(fields)?));
            if f.name == "cache" {
                s.insert("not".into(), selects_nothing_schema(fields)?);
            }
        }
        FieldKind::HeaderList { max_items } => {
            s.insert("maxItems".into(), json!(max_items));
            s.insert("uniqueItems".into(), json!(true));
            s.insert(
                "items".into(),
                json!({ "type": "string", "minLength": 1, "pattern": HEADER_NAME_PATTERN }),
            );
        }
    }
    if let Some(d) = f.default {
        s.insert("default".into(), default_json(d));
    }
    Ok(Value::Object(s))
}

fn properties(fields: &[FieldSpec]) -> Result<Map<String, Value>, String> {
    fields
        .iter()
        .map(|f| Ok((f.name.to_string(), field_schema(f)?)))
        .collect()
}

fn meta_json() -> Result<String, String> {
    let required: Vec<&str> = FIELDS
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    let label_patterns: Vec<Value> = METRIC_LABEL_PATTERNS
        .iter()
        .map(|(label, pattern)| json!({ "label": label, "pattern": pattern }))
        .collect();
    let meta = json!({
        "config_schema": {
            "$schema": "http://json-schema.org/draft-04/schema#",
            "title": "ping_auth",
            "description": "Configuration of the ping_auth filter (Ping Identity Sideband authorization). \
                            Generated from src/config.rs by gen-schema; do not edit.",
            "type": "object",
            "required": required,
            "additionalProperties": false,
            "properties": properties(FIELDS)?,
        },
        "metrics": {
            "label_patterns": label_patterns,
        },
    });
    let mut out = serde_json::to_string_pretty(&meta).map_err(|e| e.to_string())?;
    out.push('\n');
    Ok(out)
}

/// A Lua double-quoted string literal.
fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for b in s.bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(char::from(b)),
            _ => out.push_str(&format!("\\{b}")),
        }
    }
    out.push('"');
    out
}

/// One field of `config` (`depth` 0) or of a record inside it, indented to match.
fn lua_field(f: &FieldSpec, depth: usize) -> String {
    let pad = " ".repeat(10 + 8 * depth);
    let mut attrs: Vec<String> = Vec::new();
    let mut nested = String::new();
    match f.kind {
        FieldKind::String { .. } | FieldKind::Rule(_) => attrs.push("type = \"string\"".into()),
        FieldKind::Integer { min, max } => {
            attrs.push("type = \"integer\"".into());
            attrs.push(format!("between = {{ {min}, {max} }}"));
        }
        FieldKind::Boolean => attrs.push("type = \"boolean\"".into()),
        FieldKind::Object(fields) => {
            attrs.push("type = \"record\"".into());
            for inner in fields {
                nested.push_str(&lua_field(inner, depth + 1));
            }
        }
        FieldKind::HeaderList { max_items } => {
            attrs.push("type = \"array\"".into());
            attrs.push(
                "elements = { type = \"string\", custom_validator = validate_header_name }".into(),
            );
            attrs.push(format!("len_max = {max_items}"));
        }
    }
    // A record is required without a default: Kong (and Konnect) then store an absent
    // record filled with its fields' defaults, which config::parse accepts.
    let required = f.required || matches!(f.kind, FieldKind::Object(_));
    attrs.push(format!("required = {required}"));
    if let Some(d) = f.default {
        attrs.push(format!("default = {}", default_lua(d)));
    }
    if f.referenceable {
        attrs.push("referenceable = true".into());
    }
    if f.secret {
        // Kong Enterprise keyring encryption at rest; ignored where there is no keyring.
        attrs.push("encrypted = true".into());
    }
    if let Some(v) = lua_validator(f) {
        attrs.push(format!("custom_validator = {v}"));
    }
    attrs.push(format!("description = {}", lua_str(f.description)));
    let mut out = String::new();
    if depth == 0 {
        let origin = match f.lua {
            Some(l) if l == f.name => "Lua ping-auth: same field".to_string(),
            Some(l) => format!("Lua ping-auth: {l}"),
            None => "added by ping_auth (not in the Lua plugin)".to_string(),
        };
        out.push_str(&format!("{pad}-- {origin}\n"));
    }
    out.push_str(&format!("{pad}{{ {} = {{\n", f.name));
    for a in attrs {
        out.push_str(&format!("{pad}    {a},\n"));
    }
    if !nested.is_empty() {
        out.push_str(&format!("{pad}    fields = {{\n{nested}{pad}    }},\n"));
    }
    out.push_str(&format!("{pad}}} }},\n"));
    out
}

/// The validators rendered from `FIELDS`: the header lists' duplicate check and the
/// `cache` key rule, with the parser's messages and the fields' defaults.
fn lua_generated_validators() -> Result<String, String> {
    let mut out = String::new();
    if FIELDS.iter().any(|f| has_header_list(f.kind)) {
        out.push_str(&format!(
            r#"
-- A header list, as config::parse: no name twice, compared case-insensitively (the
-- items are checked by validate_header_name first).
local function validate_header_list(value)
  local seen = {{}}
  for _, name in ipairs(value) do
    local lower = name:lower()
    if seen[lower] then
      return nil, {dup} .. lower
    end
    seen[lower] = true
  end
  return true
end
"#,
            dup = lua_str(DUPLICATE_HEADER_NAME)
        ));
    }
    let Some(cache) = FIELDS.iter().find(|f| f.name == "cache") else {
        return Ok(out);
    };
    let FieldKind::Object(fields) = cache.kind else {
        return Err("cache must be an object".into());
    };
    let enabled = default_flag(cache_field(fields, "enabled")?)?;
    let mut flags = Vec::new();
    for name in CACHE_KEY_FLAGS {
        let f = cache_field(fields, name)?;
        flags.push(format!("part({}, {})", lua_str(f.name), default_flag(f)?));
    }
    let list = cache_field(fields, CACHE_KEY_HEADER_LIST)?;
    out.push_str(&format!(
        r#"
-- cache, as config::parse: an enabled cache whose key selects nothing is refused. A
-- part that is nil or null takes its default.
local function validate_cache(value)
  local function part(name, default)
    local v = value[name]
    if v == nil or v == null then
      return default
    end
    return v
  end
  if part("enabled", {enabled}) ~= true then
    return true
  end
  if {flags} then
    return true
  end
  if #part({list}, {default_list}) > 0 then
    return true
  end
  return nil, {reason}
end
"#,
        flags = flags.join(" or "),
        list = lua_str(list.name),
        default_list = lua_list(default_list(list)?),
        reason = lua_str(CACHE_KEY_SELECTS_NOTHING),
    ));
    Ok(out)
}

fn has_header_list(kind: FieldKind) -> bool {
    match kind {
        FieldKind::HeaderList { .. } => true,
        FieldKind::Object(fields) => fields.iter().any(|f| has_header_list(f.kind)),
        _ => false,
    }
}

const LUA_HEADER: &str = r##"-- Konnect custom-plugin schema for the ping_auth Wasm filter.
--
-- GENERATED from src/config.rs (FIELDS) by
--   cargo run -p ping-auth-harness --bin gen-schema
-- Do not edit by hand: `gen-schema --check` (make lint) fails when this file is stale.
--
-- Upload it to a Konnect control plane (kong/konnect.md). The data planes run the
-- filter itself (ping_auth.wasm, Kong 3.9 / 3.10 with wasm = on), not a Lua plugin:
-- never install this file as a Lua plugin next to the filter, Kong refuses a Lua
-- plugin and a filter with the same name.
--
-- Self-contained on purpose (Konnect accepts no require() in schema.lua); the
-- validators implement the same rules as config::parse in src/config.rs.

local null = ngx.null


-- http(s)://host[:port][/path][?query], as config::parse_url: scheme http or https
-- in any case; host = letters, digits, . _ ~ - or a bracketed IPv6 literal; port
-- 1..65535 without leading zero; no user@, no #fragment, no white space.
local function url_error(url)
  local s, e = url:find("://", 1, true)
  if not s then
    if url:sub(1, 4):lower() == "http" then
      return "URL must start with http:// or https://"
    end
    return "URL scheme must be either 'http' or 'https'"
  end
  local scheme = url:sub(1, s - 1):lower()
  if scheme ~= "http" and scheme ~= "https" then
    return "URL scheme must be either 'http' or 'https'"
  end
  local rest = url:sub(e + 1)
  local auth_end = rest:find("[/?]") or (#rest + 1)
  local authority = rest:sub(1, auth_end - 1)
  local tail = rest:sub(auth_end)
  if authority == "" then
    return "URL host cannot be blank"
  end
  if authority:find("@", 1, true) then
    return "URL must not contain credentials (user@host)"
  end
  local host, port
  if authority:sub(1, 1) == "[" then
    local close = authority:find("]", 1, true)
    if not close then
      return "URL host has an unterminated IPv6 literal"
    end
    host = authority:sub(1, close)
    local inner = host:sub(2, -2)
    if inner == "" or inner:find("[^0-9A-Fa-f:%.]") then
      return "URL host is not a valid IPv6 literal"
    end
    local after = authority:sub(close + 1)
    if after ~= "" then
      if after:sub(1, 1) ~= ":" then
        return "URL host is followed by garbage"
      end
      port = after:sub(2)
    end
  else
    local colon = authority:find(":", 1, true)
    if colon then
      host, port = authority:sub(1, colon - 1), authority:sub(colon + 1)
    else
      host = authority
    end
    if host == "" then
      return "URL host cannot be blank"
    end
    if host:find("[^A-Za-z0-9%._~%-]") then
      return "URL host may contain only letters, digits, '.', '-', '_' and '~'"
    end
  end
  if port ~= nil then
    if port == "" or #port > 5 or port:find("[^0-9]") or port:sub(1, 1) == "0"
       or tonumber(port) > 65535 then
      return "URL port must be a number from 1 to 65535, got '" .. port .. "'"
    end
  end
  if tail:find("#", 1, true) then
    return "URL must not contain a fragment (#)"
  end
  if tail:find("[^!-~]") then
    return "URL path and query must be printable ASCII without spaces (percent-encode other characters)"
  end
  return nil
end

local function validate_url(value)
  local err = url_error(value)
  if err then
    return nil, err
  end
  return true
end

-- An RFC 9110 token, as config::is_token.
local function validate_header_name(value)
  if value:find("[^A-Za-z0-9!#$%%&'*+%-.^_`|~]") then
    return nil, "must be a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
  end
  return true
end

-- mode, as config::MODE_RULE.
local function validate_mode(value)
  if value ~= "enforce" and value ~= "shadow" then
    return nil, "must be \"enforce\" or \"shadow\""
  end
  return true
end

-- on_<failure class>, as config::FAILURE_ACTION_RULE.
local function validate_failure_action(value)
  if value == "deny" or value == "allow" then
    return true
  end
  local code = value:match("^deny:([45]%d%d)$")
  if not code then
    return nil, "must be \"deny\", \"deny:<status 400-599>\" or \"allow\", got \"" .. value .. "\""
  end
  return true
end

-- fail_open_methods, as config::METHODS_RULE.
local function validate_methods(value)
  for item in (value .. ","):gmatch("([^,]*),") do
    if not item:match("^ *%u+ *$") then
      return nil, "must be upper-case method names separated by commas, e.g. \"GET,HEAD,OPTIONS\""
    end
  end
  return true
end

local function validate_secret(value)
  if value:find("\r", 1, true) or value:find("\n", 1, true) or value:find("\0", 1, true) then
    return nil, "must not contain CR, LF or NUL (it is sent as a header value)"
  end
  return true
end
"##;

const LUA_SCHEMA_OPEN: &str = r##"
return {
  name = "ping_auth",
  fields = {
    -- Kong 3.9 / 3.10 filter plugins refuse consumer scoping and need a service or
    -- a route (entity_checks below).
    { consumer = { type = "foreign", reference = "consumers", eq = null } },
    { protocols = {
        type = "set",
        required = true,
        default = { "http", "https" },
        elements = { type = "string", one_of = { "http", "https" } },
    } },
    { config = {
        type = "record",
        fields = {
"##;

const LUA_FOOTER: &str = r#"        },
    } },
  },
  entity_checks = {
    { mutually_exclusive = { "service", "route" } },
    { at_least_one_of = { "service", "route" } },
  },
}
"#;

fn schema_lua() -> Result<String, String> {
    let mut out = String::from(LUA_HEADER);
    out.push_str(&lua_generated_validators()?);
    out.push_str(LUA_SCHEMA_OPEN);
    for f in FIELDS {
        out.push_str(&lua_field(f, 0));
    }
    out.push_str(LUA_FOOTER);
    Ok(out)
}

fn workspace_root() -> Result<PathBuf, String> {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| "cannot find the workspace root".to_string())
}

fn run(check: bool) -> Result<bool, String> {
    let root = workspace_root()?;
    let meta = meta_json().map_err(|e| format!("cannot render {META_PATH}: {e}"))?;
    let lua = schema_lua().map_err(|e| format!("cannot render {LUA_PATH}: {e}"))?;
    let files = [(META_PATH, meta), (LUA_PATH, lua)];
    let mut up_to_date = true;
    for (rel, content) in &files {
        let path = root.join(rel);
        if check {
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != *content {
                eprintln!(
                    "{rel} is out of date: run `cargo run -p ping-auth-harness --bin gen-schema`"
                );
                up_to_date = false;
            }
        } else {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
            }
            std::fs::write(&path, content).map_err(|e| format!("cannot write {rel}: {e}"))?;
            println!("wrote {rel}");
        }
    }
    Ok(up_to_date)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let check = match args.as_slice() {
        [] => false,
        [flag] if flag == "--check" => true,
        _ => {
            eprintln!("usage: gen-schema [--check]");
            return ExitCode::from(2);
        }
    };
    match run(check) {
        Ok(true) => {
            if check {
                println!("{META_PATH} and {LUA_PATH} are up to date");
            }
            ExitCode::SUCCESS
        }
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("gen-schema: {e}");
            ExitCode::FAILURE
        }
    }
}
