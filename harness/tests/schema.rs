//! The configuration schemas against the parser.
//!
//! `schema/ping_auth.meta.json` (Kong) and `schema/schema.lua` (Konnect) are generated
//! from `ping_auth::config::FIELDS` by `gen-schema`. These tests check that:
//!
//! (a) meta.json's `config_schema` is a valid draft-04 schema that uses only keywords
//!     lua-resty-ljsonschema (Kong's validator) supports, and describes exactly `FIELDS`;
//! (b) every fixture in `schema/fixtures/{valid,invalid}` is accepted or refused alike by
//!     the JSON Schema and by `config::parse` (what `on_configure` runs), once with a
//!     draft-04 validator and once with the `pattern`s evaluated by PCRE2 the way Kong
//!     evaluates them (`ngx.re.find(subject, pattern, "jo")`, byte mode);
//! (c) the committed schema files are what `gen-schema` generates;
//! (d) schema.lua, loaded by a real Lua interpreter (LuaJIT, as in Kong), accepts and
//!     refuses the same fixtures, its validators run under a small emulation of Kong's
//!     schema rules for the attributes the file uses. Skipped with a message when no
//!     interpreter is installed (Debian: `apt-get install -y luajit`), unless
//!     `REQUIRE_LUA=1`, which turns the skip into a failure (CI).
//!
//! It also checks that every `ping_auth` configuration in `kong/` (files and the YAML blocks
//! of `kong/migration.md`) and `examples/kong.yml` is accepted by both the parser and the
//! JSON Schema and scoped where Kong accepts a filter plugin, and that every configuration of
//! the Lua `ping-auth` plugin there has the Lua plugin's shape and is accepted unchanged by
//! the filter. `tests/manifests.rs` checks the Kubernetes files.

// Test code: a failed unwrap is a failed test (clippy.toml allows it only inside #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ping_auth::config::{self, FieldKind, FIELDS, URL_PATTERN};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Fixtures on which Kong's PCRE evaluation of `URL_PATTERN` disagrees with
/// `config::parse_url` today (see the test `kong_pcre_patterns_agree_with_the_parser`).
/// Kong would store such a configuration and then `on_configure` would refuse it, which
/// fails the whole configuration rebuild. Remove an entry once `URL_PATTERN` is fixed;
/// the test fails when a listed fixture no longer diverges.
const KNOWN_KONG_DIVERGENCES: &[&str] = &[];

/// Fixtures that schema.lua (Konnect) refuses although the parser and meta.json accept
/// them, and why. Harmless (the control plane is the stricter one: it never pushes a
/// configuration the filter refuses), and checked: the test fails when one no longer
/// diverges.
const LUA_STRICTER: &[(&str, &str)] = &[(
    "valid/cache-null.json",
    "schema.lua declares the cache record required = true, so that Kong and Konnect store \
     an absent record filled with its fields' defaults; Kong refuses an explicit null for a \
     required record",
)];

/// Keywords lua-resty-ljsonschema implements (kong-wasm.md §2.2) that the schema may use.
const LJSONSCHEMA_KEYWORDS: &[&str] = &[
    "$schema",
    "title",
    "description",
    "default",
    "type",
    "properties",
    "required",
    "additionalProperties",
    "enum",
    "minimum",
    "maximum",
    "minLength",
    "maxLength",
    "pattern",
    "items",
    "maxItems",
    "uniqueItems",
    "not",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

struct Fixture {
    /// `valid/<file>` or `invalid/<file>`.
    name: String,
    valid: bool,
    bytes: Vec<u8>,
    value: Value,
}

fn fixtures() -> Vec<Fixture> {
    let mut out = Vec::new();
    for (dir, valid) in [("valid", true), ("invalid", false)] {
        let path = root().join("schema/fixtures").join(dir);
        let mut names: Vec<_> = std::fs::read_dir(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".json"))
            .collect();
        names.sort();
        for n in names {
            let bytes = std::fs::read(path.join(&n)).unwrap();
            let value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{dir}/{n} is not JSON: {e}"));
            out.push(Fixture {
                name: format!("{dir}/{n}"),
                valid,
                bytes,
                value,
            });
        }
    }
    assert!(
        out.iter().filter(|f| f.valid).count() >= 10
            && out.iter().filter(|f| !f.valid).count() >= 10,
        "schema/fixtures/valid and schema/fixtures/invalid must hold fixtures"
    );
    out
}

fn meta() -> Value {
    let text = std::fs::read_to_string(root().join("schema/ping_auth.meta.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn config_schema() -> Value {
    meta()["config_schema"].clone()
}

fn parser_accepts(f: &Fixture) -> Result<(), String> {
    config::parse(&f.bytes)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "accepts"
    } else {
        "refuses"
    }
}

/// Fails with one line per fixture on which `checker` and the parser disagree, or on
/// which they agree against the fixture's directory.
fn assert_agreement(what: &str, checker: impl Fn(&Fixture) -> Result<(), String>) {
    let mut problems = Vec::new();
    for f in fixtures() {
        let parser = parser_accepts(&f);
        let other = checker(&f);
        if parser.is_ok() != other.is_ok() || parser.is_ok() != f.valid {
            problems.push(format!(
                "{}: parser {} ({}), {what} {} ({})",
                f.name,
                verdict(parser.is_ok()),
                parser.err().unwrap_or_default(),
                verdict(other.is_ok()),
                other.err().unwrap_or_default(),
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------- (a)

/// Every keyword of `s` and of its subschemas is one lua-resty-ljsonschema supports.
fn check_keywords(s: &Map<String, Value>, at: &str) {
    for (k, v) in s {
        assert!(
            LJSONSCHEMA_KEYWORDS.contains(&k.as_str()),
            "{at}: keyword {k} is not in the set lua-resty-ljsonschema supports"
        );
        match (k.as_str(), v) {
            ("properties", Value::Object(props)) => {
                for (name, p) in props {
                    check_keywords(p.as_object().unwrap(), &format!("{at}.{name}"));
                }
            }
            ("items" | "not", Value::Object(sub)) => check_keywords(sub, &format!("{at}/{k}")),
            _ => {}
        }
    }
}

/// `props` (a `properties` object) describes exactly `fields`.
fn check_properties(props: &Map<String, Value>, fields: &[config::FieldSpec], at: &str) {
    let names: Vec<&str> = props.keys().map(String::as_str).collect();
    let field_names: Vec<&str> = fields.iter().map(|f| f.name).collect();
    assert_eq!(names, field_names, "{at}");
    for f in fields {
        let name = format!("{at}{}", f.name);
        let p = props[f.name].as_object().unwrap();
        let types: Vec<&str> = match &p["type"] {
            Value::String(t) => vec![t.as_str()],
            Value::Array(a) => a.iter().map(|t| t.as_str().unwrap()).collect(),
            other => panic!("{name}: type {other}"),
        };
        assert_eq!(
            types.contains(&"null"),
            !f.required,
            "{name}: optional fields accept null",
        );
        match f.kind {
            FieldKind::String { url } => {
                assert_eq!(types[0], "string");
                assert_eq!(p["minLength"], 1);
                if url {
                    assert_eq!(p["pattern"], URL_PATTERN, "{name}");
                }
            }
            FieldKind::Integer { min, max } => {
                assert_eq!(types[0], "integer");
                assert_eq!(p["minimum"], min);
                assert_eq!(p["maximum"], max);
            }
            FieldKind::Boolean => assert_eq!(types[0], "boolean"),
            FieldKind::Rule(rule) => {
                assert_eq!(types[0], "string");
                assert_eq!(p["pattern"], rule.pattern, "{name}");
            }
            FieldKind::Object(inner) => {
                assert_eq!(types[0], "object");
                assert_eq!(p["additionalProperties"], false, "{name}");
                let required: Vec<&str> = inner
                    .iter()
                    .filter(|f| f.required)
                    .map(|f| f.name)
                    .collect();
                match p.get("required") {
                    None => assert!(required.is_empty(), "{name}"),
                    Some(r) => assert_eq!(r, &serde_json::json!(required), "{name}"),
                }
                check_properties(
                    p["properties"].as_object().unwrap(),
                    inner,
                    &format!("{name}."),
                );
            }
            FieldKind::HeaderList { max_items } => {
                assert_eq!(types[0], "array");
                assert_eq!(p["maxItems"], max_items, "{name}");
                assert_eq!(p["uniqueItems"], true, "{name}");
                let items = p["items"].as_object().unwrap();
                assert_eq!(items["type"], "string", "{name}");
                assert_eq!(items["minLength"], 1, "{name}");
                assert_eq!(
                    items["pattern"],
                    config_schema()["properties"]["secret_header_name"]["pattern"],
                    "{name}: the header-name pattern"
                );
            }
        }
        assert_eq!(p["description"], f.description);
        match f.default {
            None => assert!(!p.contains_key("default"), "{name}"),
            Some(config::Default::Integer(i)) => assert_eq!(p["default"], i),
            Some(config::Default::Boolean(b)) => assert_eq!(p["default"], b),
            Some(config::Default::Text(t)) => assert_eq!(p["default"], t),
            Some(config::Default::List(l)) => assert_eq!(p["default"], serde_json::json!(l)),
        }
    }
}

#[test]
fn meta_json_is_a_draft4_schema_of_fields() {
    let meta = meta();
    let keys: Vec<&String> = meta.as_object().unwrap().keys().collect();
    assert_eq!(
        keys,
        ["config_schema", "metrics"],
        "Kong's FILTER_META_SCHEMA allows config_schema and metrics"
    );
    let schema = config_schema();
    jsonschema::draft4::meta::validate(&schema).unwrap();
    assert_eq!(schema["$schema"], "http://json-schema.org/draft-04/schema#");
    assert_eq!(schema["type"], "object");
    assert_eq!(schema["additionalProperties"], false);
    check_keywords(schema.as_object().unwrap(), "config_schema");

    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let field_required: Vec<&str> = FIELDS
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    assert_eq!(required, field_required);
    check_properties(schema["properties"].as_object().unwrap(), FIELDS, "");
}

/// Kong's Prometheus label patterns: `metrics.label_patterns`, in the order of
/// `config::METRIC_LABEL_PATTERNS`, each a PCRE with two groups.
#[test]
fn meta_json_metrics_label_patterns() {
    let meta = meta();
    let metrics = meta["metrics"].as_object().unwrap();
    assert_eq!(
        metrics.keys().collect::<Vec<_>>(),
        ["label_patterns"],
        "metrics holds label_patterns only"
    );
    let patterns: Vec<(&str, &str)> = metrics["label_patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let p = p.as_object().unwrap();
            assert_eq!(p.len(), 2, "{p:?}");
            (p["label"].as_str().unwrap(), p["pattern"].as_str().unwrap())
        })
        .collect();
    assert_eq!(patterns, config::METRIC_LABEL_PATTERNS);
    for (label, pattern) in patterns {
        let re = pcre2::bytes::RegexBuilder::new().build(pattern).unwrap();
        let name = format!("pw:ping_auth:requests_{label}=abc");
        let caps = re
            .captures(name.as_bytes())
            .unwrap()
            .unwrap_or_else(|| panic!("{label}: {pattern} does not match {name}"));
        assert_eq!(caps.len(), 3, "{label}: two groups");
        assert_eq!(&caps[1], format!("_{label}=abc").as_bytes(), "{label}");
        assert_eq!(&caps[2], b"abc", "{label}");
    }
    let all = ping_auth_harness::emulator::LabelPattern::from_meta_json(
        &std::fs::read_to_string(root().join("schema/ping_auth.meta.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(all.len(), config::METRIC_LABEL_PATTERNS.len());
}

// ---------------------------------------------------------------------------- (b)

#[test]
fn json_schema_and_parser_agree_on_every_fixture() {
    let validator = jsonschema::draft4::new(&config_schema()).unwrap();
    assert_agreement("JSON Schema (draft 4)", |f| {
        let errors: Vec<String> = validator
            .iter_errors(&f.value)
            .map(|e| e.to_string())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors.join("; "))
        }
    });
}

/// One step from a value to a part of it: an object's property, or every item of an
/// array.
#[derive(Clone, Debug)]
enum Step {
    Prop(String),
    Items,
}

fn path_name(path: &[Step]) -> String {
    path.iter()
        .map(|s| match s {
            Step::Prop(name) => name.as_str(),
            Step::Items => "[]",
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// Removes every `pattern` from `schema` (its properties and items, recursively) and
/// returns each with the path to the values it applies to.
fn take_patterns(schema: &mut Value, at: &mut Vec<Step>, out: &mut Vec<(Vec<Step>, String)>) {
    let Some(obj) = schema.as_object_mut() else {
        return;
    };
    if let Some(Value::String(p)) = obj.remove("pattern") {
        out.push((at.clone(), p));
    }
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        for (name, p) in props {
            at.push(Step::Prop(name.clone()));
            take_patterns(p, at, out);
            at.pop();
        }
    }
    if let Some(items) = obj.get_mut("items") {
        at.push(Step::Items);
        take_patterns(items, at, out);
        at.pop();
    }
}

/// The strings at `path` in `v`.
fn strings_at<'a>(v: &'a Value, path: &[Step], out: &mut Vec<&'a str>) {
    match path.split_first() {
        None => {
            if let Value::String(s) = v {
                out.push(s);
            }
        }
        Some((Step::Prop(name), rest)) => {
            if let Some(child) = v.as_object().and_then(|o| o.get(name)) {
                strings_at(child, rest, out);
            }
        }
        Some((Step::Items, rest)) => {
            if let Value::Array(items) = v {
                for item in items {
                    strings_at(item, rest, out);
                }
            }
        }
    }
}

/// Kong evaluates `pattern` with `ngx.re.find(subject, pattern, "jo")`: PCRE, byte mode,
/// no UTF, `$` matching before a final newline. Everything else is structural and
/// checked by the draft-04 validator with the patterns removed.
#[test]
fn kong_pcre_patterns_agree_with_the_parser() {
    let mut structural = config_schema();
    let mut found = Vec::new();
    take_patterns(&mut structural, &mut Vec::new(), &mut found);
    let patterns: Vec<(String, Vec<Step>, pcre2::bytes::Regex)> = found
        .into_iter()
        .map(|(path, pat)| {
            let name = path_name(&path);
            let re = pcre2::bytes::RegexBuilder::new()
                .jit_if_available(true)
                .build(&pat)
                .unwrap_or_else(|e| panic!("{name}: PCRE2 refuses the pattern: {e}"));
            (name, path, re)
        })
        .collect();
    assert!(
        patterns.iter().any(|(_, path, _)| path.len() > 1),
        "nested patterns are collected"
    );
    let validator = jsonschema::draft4::new(&structural).unwrap();
    let kong = |f: &Fixture| -> Result<(), String> {
        if !validator.is_valid(&f.value) {
            return Err("structure".into());
        }
        for (name, path, re) in &patterns {
            let mut values = Vec::new();
            strings_at(&f.value, path, &mut values);
            for s in values {
                if !re.is_match(s.as_bytes()).unwrap() {
                    return Err(format!("{name} does not match its pattern"));
                }
            }
        }
        Ok(())
    };

    let mut problems = Vec::new();
    for f in fixtures() {
        let parser_ok = parser_accepts(&f).is_ok();
        let kong_ok = kong(&f).is_ok();
        let known = KNOWN_KONG_DIVERGENCES.contains(&f.name.as_str());
        if known && parser_ok == kong_ok {
            problems.push(format!(
                "{}: no longer diverges; remove it from KNOWN_KONG_DIVERGENCES",
                f.name
            ));
        } else if !known && (parser_ok != kong_ok || parser_ok != f.valid) {
            problems.push(format!(
                "{}: parser {}, Kong's PCRE evaluation {}",
                f.name,
                verdict(parser_ok),
                verdict(kong_ok)
            ));
        }
    }
    for known in KNOWN_KONG_DIVERGENCES {
        assert!(
            fixtures().iter().any(|f| f.name == *known),
            "{known}: no such fixture"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    if !KNOWN_KONG_DIVERGENCES.is_empty() {
        eprintln!(
            "NOTE: Kong's PCRE evaluation of URL_PATTERN still accepts {} fixture(s) that \
             config::parse refuses: {}",
            KNOWN_KONG_DIVERGENCES.len(),
            KNOWN_KONG_DIVERGENCES.join(", ")
        );
    }
}

/// The Lua plugin's name (the filter's is `ping_auth`).
const LUA_PLUGIN: &str = "ping-auth";

/// Kong and decK files, and the Markdown pages whose `yaml` blocks are configurations, with
/// the number of `ping_auth` and `ping-auth` entries each holds.
const SHIPPED: &[(&str, usize, usize)] = &[
    ("kong/kong.plugins.yml", 2, 0),
    ("kong/kong.filter-chains.yml", 2, 0),
    ("kong/deck.plugins.yaml", 1, 0),
    ("kong/deck.filter-chains.yaml", 1, 0),
    ("kong/kong.side-by-side.yml", 1, 1),
    ("kong/deck.side-by-side.yaml", 1, 1),
    ("kong/migration.md", 2, 2),
    ("examples/kong.yml", 1, 0),
    ("kong/kong.prometheus.yml", 1, 0),
    ("docs/cache.md", 2, 0),
];

/// One plugin (or filter-chain filter) entry with a `config`.
struct Entry {
    /// `file #n` (`file block k #n` for Markdown).
    label: String,
    /// `name` of the entry.
    name: String,
    config: Value,
    /// Mapping keys from the document root to the entry (sequence indices left out), e.g.
    /// `["services", "routes", "plugins"]`.
    path: Vec<String>,
    /// The entry's own keys other than `config`.
    keys: Vec<String>,
}

/// The YAML documents of a shipped file: the file itself, or each ```` ```yaml ```` block of
/// a Markdown page.
fn documents(file: &str) -> Vec<(String, serde_yaml::Value)> {
    let text = std::fs::read_to_string(root().join(file)).unwrap();
    let mut docs = Vec::new();
    if file.ends_with(".md") {
        let mut block: Option<(String, Vec<String>)> = None;
        for line in text.lines() {
            let trimmed = line.trim_start();
            let indent = line.len() - trimmed.len();
            match block.as_mut() {
                None if trimmed == "```yaml" => block = Some((" ".repeat(indent), Vec::new())),
                None => {}
                Some(_) if trimmed == "```" => {
                    let (_, lines) = block.take().unwrap();
                    let label = format!("{file} block {}", docs.len() + 1);
                    let doc = serde_yaml::from_str(&lines.join("\n"))
                        .unwrap_or_else(|e| panic!("{label} is not YAML: {e}"));
                    docs.push((label, doc));
                }
                Some((prefix, lines)) => lines.push(
                    line.strip_prefix(prefix.as_str())
                        .unwrap_or(line)
                        .to_string(),
                ),
            }
        }
        assert!(block.is_none(), "{file}: unterminated yaml block");
    } else {
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc = serde_yaml::Value::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: document {} is not YAML: {e}", i + 1));
            docs.push((file.to_string(), doc));
        }
    }
    docs
}

/// Every entry named `ping_auth` or `ping-auth` with a `config` in a shipped file.
fn entries(file: &str) -> Vec<Entry> {
    fn walk(v: &serde_yaml::Value, doc: &str, path: &mut Vec<String>, out: &mut Vec<Entry>) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                let name = m.get("name").and_then(|n| n.as_str());
                if let (Some(name @ ("ping_auth" | LUA_PLUGIN)), Some(config)) =
                    (name, m.get("config"))
                {
                    out.push(Entry {
                        label: format!("{doc} #{}", out.len() + 1),
                        name: name.to_string(),
                        config: serde_json::to_value(config).unwrap(),
                        path: path.clone(),
                        keys: m
                            .keys()
                            .filter_map(|k| k.as_str())
                            .filter(|k| *k != "config")
                            .map(str::to_string)
                            .collect(),
                    });
                }
                for (k, child) in m {
                    path.push(k.as_str().unwrap_or_default().to_string());
                    walk(child, doc, path, out);
                    path.pop();
                }
            }
            serde_yaml::Value::Sequence(s) => s.iter().for_each(|c| walk(c, doc, path, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (label, doc) in documents(file) {
        walk(&doc, &label, &mut Vec::new(), &mut out);
    }
    out
}

/// All shipped entries, after checking each file's counts.
fn shipped_entries() -> Vec<Entry> {
    let mut all = Vec::new();
    for (file, filters, lua) in SHIPPED {
        let found = entries(file);
        let count = |n: &str| found.iter().filter(|e| e.name == n).count();
        assert_eq!(
            (count("ping_auth"), count(LUA_PLUGIN)),
            (*filters, *lua),
            "{file}: (ping_auth, ping-auth) configurations found"
        );
        all.extend(found);
    }
    all
}

/// The `ping_auth` configurations shipped in Kong and decK files.
fn shipped_configs() -> Vec<(String, Value)> {
    shipped_entries()
        .into_iter()
        .filter(|e| e.name == "ping_auth")
        .map(|e| (e.label, e.config))
        .collect()
}

fn assert_filter_config_valid(name: &str, config: &Value) {
    let validator = jsonschema::draft4::new(&config_schema()).unwrap();
    let bytes = serde_json::to_vec(config).unwrap();
    if let Err(e) = config::parse(&bytes) {
        panic!("{name}: config::parse refuses it: {e}");
    }
    let errors: Vec<String> = validator
        .iter_errors(config)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{name}: {}", errors.join("; "));
}

#[test]
fn shipped_kong_configurations_are_valid() {
    for (name, config) in shipped_configs() {
        assert_filter_config_valid(&name, &config);
    }
}

/// Where Kong accepts a Wasm filter plugin (Kong 3.9 `kong/runloop/wasm/plugins.lua`: one of
/// `service` or `route`, no consumer): nested in a service or route, or top-level with a
/// `service` or `route` key; never under consumers or consumer groups. Filter-chain filters
/// are nested in a service's or route's `filter_chains`.
#[test]
fn shipped_filter_plugins_are_scoped_to_a_service_or_route() {
    for e in shipped_entries().iter().filter(|e| e.name == "ping_auth") {
        let under = |k: &str| e.path.iter().any(|p| p == k);
        assert!(
            !under("consumers")
                && !under("consumer_groups")
                && !e.keys.iter().any(|k| k == "consumer"),
            "{}: a ping_auth plugin cannot be consumer-scoped",
            e.label
        );
        let nested = under("services") || under("routes");
        let top_level_scoped =
            e.path == ["plugins"] && e.keys.iter().any(|k| k == "service" || k == "route");
        assert!(
            nested || top_level_scoped,
            "{}: a ping_auth plugin must be scoped to a service or a route (path {:?})",
            e.label,
            e.path
        );
    }
}

/// The Lua plugin's configurations (side-by-side and migration files) follow the Lua
/// `ping-auth` 1.2.0 schema as far as its shape goes: only its fields, the required ones
/// present, strings non-empty, integers > 0 (`gt = 0`), booleans. And the migration's
/// promise: the same config, unchanged, is accepted by the filter.
#[test]
fn shipped_lua_plugin_configurations_are_valid() {
    fn lua_structure(config: &Value) -> Result<(), String> {
        let obj = config.as_object().ok_or("config is not a mapping")?;
        for (k, v) in obj {
            let f = FIELDS
                .iter()
                .find(|f| f.lua == Some(k.as_str()))
                .ok_or(format!("{k}: not a field of the Lua plugin"))?;
            let ok = match f.kind {
                FieldKind::String { .. } | FieldKind::Rule(_) => {
                    v.as_str().is_some_and(|s| !s.is_empty())
                }
                FieldKind::Integer { .. } => v.as_i64().is_some_and(|i| i > 0),
                FieldKind::Boolean => v.is_boolean(),
                FieldKind::Object(_) => v.is_object(),
                FieldKind::HeaderList { .. } => v.is_array(),
            };
            if !ok {
                return Err(format!("{k}: {v} is not a valid {:?}", f.kind));
            }
        }
        for f in FIELDS.iter().filter(|f| f.required) {
            let lua = f
                .lua
                .ok_or(format!("{}: required but not a Lua field", f.name))?;
            if obj.get(lua).is_none_or(Value::is_null) {
                return Err(format!("{lua}: required"));
            }
        }
        Ok(())
    }
    let lua: Vec<Entry> = shipped_entries()
        .into_iter()
        .filter(|e| e.name == LUA_PLUGIN)
        .collect();
    assert!(!lua.is_empty());
    for e in &lua {
        if let Err(err) = lua_structure(&e.config) {
            panic!("{}: not a valid ping-auth config: {err}", e.label);
        }
        assert_filter_config_valid(&format!("{} (as ping_auth)", e.label), &e.config);
    }
}

/// No route or service gets both plugins from one `plugins` list: each would call the
/// policy provider.
#[test]
fn shipped_files_never_put_both_plugins_on_one_entity() {
    fn walk(v: &serde_yaml::Value, doc: &str) {
        match v {
            serde_yaml::Value::Mapping(m) => {
                if let Some(serde_yaml::Value::Sequence(plugins)) = m.get("plugins") {
                    let names: Vec<&str> = plugins
                        .iter()
                        .filter_map(|p| p.get("name").and_then(|n| n.as_str()))
                        .collect();
                    assert!(
                        !(names.contains(&"ping_auth") && names.contains(&LUA_PLUGIN)),
                        "{doc}: ping_auth and ping-auth on the same entity ({:?})",
                        m.get("name")
                    );
                }
                m.values().for_each(|c| walk(c, doc));
            }
            serde_yaml::Value::Sequence(s) => s.iter().for_each(|c| walk(c, doc)),
            _ => {}
        }
    }
    for (file, _, _) in SHIPPED {
        for (label, doc) in documents(file) {
            walk(&doc, &label);
        }
    }
}

// ---------------------------------------------------------------------------- (c)

#[test]
fn generated_files_are_up_to_date() {
    let out = Command::new(env!("CARGO_BIN_EXE_gen-schema"))
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------- (d)

/// Emulates Kong's handling of a plugin's `config` record on insert for the field
/// attributes schema.lua uses (and fails on any other attribute, so the emulation cannot
/// silently ignore a new rule). First Kong's `process_auto_fields`: an absent field takes
/// a copy of its default, an absent required record is expanded to its fields' defaults,
/// an absent optional field without a default becomes null, a present record is filled
/// the same way, a null stays null. Then validation: unknown fields refused (in records
/// too); null or absent = missing (an error only when required, records included);
/// strings non-empty (Kong's default `len_min = 1`, array elements included);
/// referenceable strings holding a `{vault://...}` reference skip the other checks;
/// integers are whole numbers; records are tables, validated field by field; arrays are
/// sequences whose elements are validated first; `between`; `len_max`; field-level
/// `custom_validator(value)` last (for a record, after its fields). It also checks the
/// parts of Kong's metaschema schema.lua could trip over (description 10..500 bytes,
/// `between` only on numbers, `fields` exactly on records, `elements` exactly on arrays)
/// and the plugin-level fields. Errors name a nested field `record.field`.
const LUA_DRIVER: &str = r#"
ngx = { null = NULL }
local schema = dofile(SCHEMA_PATH)

assert(schema.name == "ping_auth", "schema name must be ping_auth")
local top, config_fields = {}, nil
for _, item in ipairs(schema.fields) do
  local name, field = next(item)
  top[name] = field
end
assert(top.consumer and top.consumer.type == "foreign" and top.consumer.eq == NULL,
       "consumer scoping must be refused (eq = null)")
assert(top.protocols and top.protocols.default[1] == "http" and top.protocols.default[2] == "https"
       and #top.protocols.default == 2, "protocols must default to http, https")
assert(top.config and top.config.type == "record", "config must be a record")
for name in pairs(top) do
  assert(name == "consumer" or name == "protocols" or name == "config",
         "unexpected plugin-level field " .. name)
end
config_fields = top.config.fields

local KNOWN = { type = true, required = true, default = true, between = true,
                referenceable = true, encrypted = true, custom_validator = true,
                description = true, fields = true, elements = true, len_max = true }
local KNOWN_ELEMENT = { type = true, custom_validator = true }
local TYPES = { string = true, integer = true, boolean = true, record = true, array = true }

local function check_schema(fields, at)
  for _, item in ipairs(fields) do
    local name, f = next(item)
    local path = at .. name
    for attr in pairs(f) do
      if not KNOWN[attr] then
        error("schema.lua field " .. path .. " uses attribute '" .. attr ..
              "', which this test does not emulate")
      end
    end
    if not TYPES[f.type] then
      error("schema.lua field " .. path .. " has type " .. tostring(f.type) ..
            ", which this test does not emulate")
    end
    if f.description and (#f.description < 10 or #f.description > 500) then
      error("description of " .. path .. " must be 10..500 bytes (Kong metaschema)")
    end
    if f.between and f.type ~= "integer" and f.type ~= "number" then
      error("between on a non-number field " .. path)
    end
    if f.len_max and f.type ~= "array" and f.type ~= "string" then
      error("len_max on field " .. path .. " of type " .. f.type)
    end
    if f.default ~= nil and f.required then
      error("required field " .. path .. " has a default")
    end
    if (f.type == "record") ~= (f.fields ~= nil) then
      error("field " .. path .. ": a record declares fields, and only a record")
    end
    if (f.type == "array") ~= (f.elements ~= nil) then
      error("field " .. path .. ": an array declares elements, and only an array")
    end
    if f.elements then
      for attr in pairs(f.elements) do
        if not KNOWN_ELEMENT[attr] then
          error("elements of " .. path .. " use attribute '" .. attr ..
                "', which this test does not emulate")
        end
      end
      if f.elements.type ~= "string" then
        error("elements of " .. path .. " must be strings in this emulation")
      end
    end
    if f.fields then
      check_schema(f.fields, path .. ".")
    end
  end
end
check_schema(config_fields, "")

local function deep_copy(v)
  if type(v) ~= "table" or v == NULL then return v end
  local c = {}
  for k, x in pairs(v) do c[k] = deep_copy(x) end
  return c
end

-- Kong's process_auto_fields(..., "insert") for the attributes schema.lua uses.
local function fill_defaults(fields, value)
  local out = {}
  for k, v in pairs(value) do out[k] = v end
  for _, item in ipairs(fields) do
    local name, f = next(item)
    local v = out[name]
    if v == nil then
      if f.default ~= nil then
        v = deep_copy(f.default)
      elseif f.required and f.type == "record" then
        v = fill_defaults(f.fields, {})
      elseif not f.required then
        v = NULL
      end
    elseif f.type == "record" and type(v) == "table" and v ~= NULL then
      v = fill_defaults(f.fields, v)
    end
    out[name] = v
  end
  return out
end

local function is_reference(v)
  return v:sub(1, 9) == "{vault://" and v:sub(-1) == "}"
end

local function is_sequence(t)
  local n = 0
  for _ in pairs(t) do n = n + 1 end
  return n == #t
end

local validate_record

-- nil, message[, true when the message already names the field]
local function check_field(f, v, path)
  if v == nil or v == NULL then
    if f.required then return nil, "required field missing" end
    return true
  end
  if f.type == "string" then
    if type(v) ~= "string" then return nil, "expected a string" end
    if #v < 1 then return nil, "length must be at least 1" end
    if f.referenceable and is_reference(v) then return true end
  elseif f.type == "integer" then
    if type(v) ~= "number" or v ~= math.floor(v) or v == math.huge or v == -math.huge then
      return nil, "expected an integer"
    end
  elseif f.type == "boolean" then
    if type(v) ~= "boolean" then return nil, "expected a boolean" end
  elseif f.type == "record" then
    if type(v) ~= "table" then return nil, "expected a record" end
    local ok, err = validate_record(f.fields, v, path .. ".")
    if not ok then return nil, err, true end
  elseif f.type == "array" then
    if type(v) ~= "table" or not is_sequence(v) then return nil, "expected an array" end
    for _, e in ipairs(v) do
      local ok, err = check_field(f.elements, e, path)
      if not ok then return nil, err end
    end
  else
    error("unsupported field type " .. tostring(f.type))
  end
  if f.between and (v < f.between[1] or v > f.between[2]) then
    return nil, "value should be between " .. f.between[1] .. " and " .. f.between[2]
  end
  if f.len_max and #v > f.len_max then
    return nil, "length must be at most " .. f.len_max
  end
  if f.custom_validator then
    local ok, err = f.custom_validator(v)
    if not ok then return nil, err end
  end
  return true
end

validate_record = function(fields, value, prefix)
  local declared = {}
  for _, item in ipairs(fields) do
    local name = next(item)
    declared[name] = true
  end
  for k in pairs(value) do
    if not declared[k] then return nil, "unknown field " .. prefix .. tostring(k) end
  end
  for _, item in ipairs(fields) do
    local name, f = next(item)
    local ok, err, named = check_field(f, value[name], prefix .. name)
    if not ok then
      if named then return nil, err end
      return nil, prefix .. name .. ": " .. err
    end
  end
  return true
end

local function validate_config(config)
  if type(config) ~= "table" or config == NULL then return nil, "expected a record" end
  return validate_record(config_fields, fill_defaults(config_fields, config), "")
end

for _, case in ipairs(CASES) do
  local ok, err = validate_config(case.config)
  if ok then
    io.write(case.name, "\tok\n")
  else
    io.write(case.name, "\terror\t", (tostring(err):gsub("[\r\n]", " ")), "\n")
  end
end
"#;

fn lua_str(s: &str) -> String {
    let mut out = String::from("\"");
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

fn to_lua(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_str(s),
        Value::Array(a) => format!(
            "{{ {} }}",
            a.iter().map(to_lua).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(o) => format!(
            "{{ {} }}",
            o.iter()
                .map(|(k, v)| format!("[{}] = {}", lua_str(k), to_lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn find_lua() -> Option<PathBuf> {
    if let Some(lua) = std::env::var_os("LUA") {
        return Some(PathBuf::from(lua));
    }
    let path = std::env::var_os("PATH")?;
    ["luajit", "lua5.1", "lua"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

#[test]
fn schema_lua_validator_agrees_with_the_parser() {
    let Some(lua) = find_lua() else {
        let msg = "SKIPPED schema_lua_validator_agrees_with_the_parser: no Lua interpreter \
                   (looked for $LUA, luajit, lua5.1, lua on PATH); install Debian's `luajit` or `lua5.1`";
        assert!(
            std::env::var_os("REQUIRE_LUA").is_none(),
            "{msg} (REQUIRE_LUA is set)"
        );
        eprintln!("{msg}");
        return;
    };
    let fixtures = fixtures();
    // NULL (ngx.null) is defined first: the cases use it for JSON null.
    let mut script = format!(
        "NULL = setmetatable({{}}, {{ __tostring = function() return \"null\" end }})\n\
         SCHEMA_PATH = {}\nCASES = {{\n",
        lua_str(root().join("schema/schema.lua").to_str().unwrap())
    );
    for f in &fixtures {
        script.push_str(&format!(
            "  {{ name = {}, config = {} }},\n",
            lua_str(&f.name),
            to_lua(&f.value)
        ));
    }
    script.push_str("}\n");
    script.push_str(LUA_DRIVER);
    let script_path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("schema_lua_driver.lua");
    std::fs::write(&script_path, script).unwrap();

    let out = Command::new(&lua).arg(&script_path).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{} failed:\n{stdout}{}",
        lua.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let results: BTreeMap<&str, Result<(), String>> = stdout
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, '\t');
            let name = parts.next().unwrap();
            let result = match parts.next() {
                Some("ok") => Ok(()),
                _ => Err(parts.next().unwrap_or_default().to_string()),
            };
            (name, result)
        })
        .collect();
    assert_eq!(results.len(), fixtures.len(), "Lua output:\n{stdout}");
    // The Lua validators give the parser's messages (the Lua plugin's, for scheme and host).
    for f in &fixtures {
        if let (Err(e), Err(lua_err)) = (config::parse(&f.bytes), &results[f.name.as_str()]) {
            let custom = [
                "URL ",
                "must be a valid",
                "must not contain",
                config::CACHE_KEY_SELECTS_NOTHING,
            ];
            if let (Some(field), true) = (&e.field, custom.iter().any(|c| e.reason.starts_with(c)))
            {
                assert_eq!(lua_err, &format!("{field}: {}", e.reason), "{}", f.name);
            }
        }
    }
    // Where schema.lua is knowingly stricter: it refuses, the parser accepts.
    let mut problems = Vec::new();
    for (name, why) in LUA_STRICTER {
        let f = fixtures
            .iter()
            .find(|f| f.name == *name)
            .unwrap_or_else(|| panic!("{name}: no such fixture"));
        match (parser_accepts(f), &results[f.name.as_str()]) {
            (Ok(()), Err(_)) => {}
            (parser, lua) => problems.push(format!(
                "{name}: listed in LUA_STRICTER ({why}) but parser {} and schema.lua {}",
                verdict(parser.is_ok()),
                verdict(lua.is_ok())
            )),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_agreement(&format!("schema.lua under {}", lua.display()), |f| {
        if LUA_STRICTER.iter().any(|(name, _)| *name == f.name) {
            return parser_accepts(f);
        }
        results[f.name.as_str()].clone()
    });
}
