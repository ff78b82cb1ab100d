//! The Kubernetes example in `kong/kubernetes/`, checked on paper (no cluster, Helm or Kong
//! Ingress Controller here):
//!
//! * every document of every manifest file (`*.yaml` other than `values*.yaml`) parses and
//!   has `apiVersion`, `kind` and `metadata.name`;
//! * each `KongPlugin` for `ping_auth` is built the way KIC builds it (the `config`, then the
//!   `configPatches` from the `Secret`s of the example, whose values KIC inserts as raw
//!   JSON), and the result is accepted by `ping_auth::config::parse` and by
//!   `schema/ping_auth.meta.json`, like the other shipped configurations; it is not global or
//!   consumer-scoped, and it turns the response hook off (see `enable_response_hook` below);
//! * `konghq.com/plugins` annotations name KongPlugins of the example, an Ingress and an
//!   HTTPRoute use the filter's, and the HTTPRoute's Gateway belongs to KIC's GatewayClass;
//! * the Helm values files (`values*.yaml`, chart `kong/ingress`) give the gateway the
//!   settings of `kong/kong.env` as quoted strings, a 3.9.x or 3.10.x image, and a volume
//!   with the filter mounted at `wasm_filters_path`.

// Test code: a failed unwrap is a failed test (clippy.toml allows it only inside #[test]).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ping_auth::config;
use serde::Deserialize;
use serde_json::Value;
use serde_yaml::Value as Yaml;
use std::path::{Path, PathBuf};

const FILTER: &str = "ping_auth";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn dir() -> PathBuf {
    root().join("kong/kubernetes")
}

/// `kong/kubernetes/*.yaml`, sorted.
fn yaml_files() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    names.sort();
    for expected in ["values.yaml", "ping-auth.yaml", "gateway-api.yaml"] {
        assert!(
            names.iter().any(|n| n == expected),
            "kong/kubernetes/{expected} is missing"
        );
    }
    names
}

fn is_values(file: &str) -> bool {
    file.starts_with("values")
}

fn read(file: &str) -> String {
    std::fs::read_to_string(dir().join(file)).unwrap()
}

struct Manifest {
    /// `file #n`.
    label: String,
    doc: Yaml,
}

impl Manifest {
    fn str_at(&self, path: &[&str]) -> Option<&str> {
        at(&self.doc, path).and_then(Yaml::as_str)
    }
    fn kind(&self) -> &str {
        self.str_at(&["kind"]).unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.str_at(&["metadata", "name"]).unwrap_or_default()
    }
    fn namespace(&self) -> Option<&str> {
        self.str_at(&["metadata", "namespace"])
    }
    /// The names listed in the `konghq.com/plugins` annotation.
    fn plugin_annotation(&self) -> Vec<&str> {
        self.str_at(&["metadata", "annotations", "konghq.com/plugins"])
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn at<'a>(v: &'a Yaml, path: &[&str]) -> Option<&'a Yaml> {
    path.iter().try_fold(v, |v, k| v.get(*k))
}

/// Every non-empty document of every manifest file.
fn manifests() -> Vec<Manifest> {
    let mut out = Vec::new();
    for file in yaml_files().into_iter().filter(|f| !is_values(f)) {
        let text = read(&file);
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let doc = Yaml::deserialize(de)
                .unwrap_or_else(|e| panic!("{file}: document {} is not YAML: {e}", i + 1));
            if !doc.is_null() {
                out.push(Manifest {
                    label: format!("{file} #{}", i + 1),
                    doc,
                });
            }
        }
    }
    out
}

/// Namespaces match when equal, or when one is left to `kubectl apply -n`.
fn same_namespace(a: &Manifest, b: &Manifest) -> bool {
    match (a.namespace(), b.namespace()) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    }
}

fn is_filter_plugin(m: &Manifest) -> bool {
    matches!(m.kind(), "KongPlugin" | "KongClusterPlugin") && m.str_at(&["plugin"]) == Some(FILTER)
}

#[test]
fn every_manifest_has_api_version_kind_and_name() {
    let all = manifests();
    assert!(
        all.len() >= 6,
        "expected the example's manifests, found {}",
        all.len()
    );
    for m in &all {
        let api = m.str_at(&["apiVersion"]).unwrap_or_default();
        assert!(!api.is_empty(), "{}: apiVersion missing", m.label);
        assert!(!m.kind().is_empty(), "{}: kind missing", m.label);
        let name = m.name();
        assert!(
            !name.is_empty()
                && name.len() <= 253
                && name.bytes().all(|b| b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || b == b'-'
                    || b == b'.'),
            "{}: metadata.name {name:?} is not a Kubernetes object name",
            m.label
        );
        let expected_api = match m.kind() {
            "KongPlugin" | "KongClusterPlugin" | "KongConsumer" => {
                Some("configuration.konghq.com/v1")
            }
            "Ingress" => Some("networking.k8s.io/v1"),
            "HTTPRoute" | "Gateway" | "GatewayClass" => Some("gateway.networking.k8s.io/v1"),
            "Secret" | "ConfigMap" | "Service" => Some("v1"),
            _ => None,
        };
        if let Some(expected) = expected_api {
            assert_eq!(api, expected, "{}: apiVersion of a {}", m.label, m.kind());
        }
    }
}

/// The value of key `key` of Secret `name` (its `stringData`), as KIC reads it.
fn secret_value<'a>(all: &'a [Manifest], user: &Manifest, name: &str, key: &str) -> &'a str {
    let secret = all
        .iter()
        .find(|s| s.kind() == "Secret" && s.name() == name && same_namespace(s, user))
        .unwrap_or_else(|| panic!("{}: Secret {name} is not in the example", user.label));
    assert_eq!(
        secret.str_at(&["metadata", "labels", "konghq.com/validate"]),
        Some("plugin"),
        "{}: a Secret used by a plugin carries the label konghq.com/validate: plugin \
         (KIC's admission webhook checks only such Secrets)",
        secret.label
    );
    secret
        .str_at(&["stringData", key])
        .unwrap_or_else(|| panic!("{}: no stringData.{key}", secret.label))
}

/// The configuration KIC sends Kong for a KongPlugin: `configFrom` (a whole configuration
/// in a Secret), or `config` with each `configPatches` entry added as raw JSON at its
/// JSON-pointer path (KIC 3.5 `kongstate.RawConfigurationWithPatchesToConfiguration`).
fn resolved_config(all: &[Manifest], plugin: &Manifest) -> Value {
    if let Some(from) = at(&plugin.doc, &["configFrom", "secretKeyRef"]) {
        let (name, key) = (
            from["name"].as_str().unwrap(),
            from["key"].as_str().unwrap(),
        );
        let text = secret_value(all, plugin, name, key);
        let yaml: Yaml = serde_yaml::from_str(text).unwrap();
        return serde_json::to_value(yaml).unwrap();
    }
    let mut config = at(&plugin.doc, &["config"])
        .map(|c| serde_json::to_value(c).unwrap())
        .unwrap_or_else(|| Value::Object(Default::default()));
    for patch in at(&plugin.doc, &["configPatches"])
        .and_then(Yaml::as_sequence)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let path = patch["path"].as_str().unwrap();
        let from = &patch["valueFrom"]["secretKeyRef"];
        let (name, key) = (
            from["name"].as_str().unwrap(),
            from["key"].as_str().unwrap(),
        );
        let raw = secret_value(all, plugin, name, key);
        let value: Value = serde_json::from_str(raw).unwrap_or_else(|e| {
            panic!(
                "{}: Secret {name} key {key} must hold JSON (KIC inserts it as a raw JSON \
                 value; a string needs inner quotes, '\"...\"'): {e}",
                plugin.label
            )
        });
        let field = path
            .strip_prefix('/')
            .filter(|f| !f.is_empty() && !f.contains('/'))
            .unwrap_or_else(|| {
                panic!(
                    "{}: patch path {path}: only /<field> is used here",
                    plugin.label
                )
            });
        config
            .as_object_mut()
            .unwrap()
            .insert(field.to_string(), value);
    }
    config
}

#[test]
fn kong_plugins_give_the_filter_a_valid_configuration() {
    let all = manifests();
    let validator = jsonschema::draft4::new(
        &serde_json::from_str::<Value>(
            &std::fs::read_to_string(root().join("schema/ping_auth.meta.json")).unwrap(),
        )
        .unwrap()["config_schema"],
    )
    .unwrap();
    let plugins: Vec<&Manifest> = all.iter().filter(|m| is_filter_plugin(m)).collect();
    assert!(!plugins.is_empty(), "no KongPlugin with plugin: {FILTER}");
    for p in plugins {
        assert!(
            at(&p.doc, &["consumerRef"]).is_none(),
            "{}: a Wasm filter plugin cannot be consumer-scoped",
            p.label
        );
        assert_ne!(
            p.str_at(&["metadata", "labels", "global"]),
            Some("true"),
            "{}: a Wasm filter plugin cannot be global",
            p.label
        );
        let config = resolved_config(&all, p);
        let bytes = serde_json::to_vec(&config).unwrap();
        if let Err(e) = config::parse(&bytes) {
            panic!(
                "{}: config::parse refuses the configuration KIC would send: {e}",
                p.label
            );
        }
        let errors: Vec<String> = validator
            .iter_errors(&config)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{}: meta.json refuses it: {}",
            p.label,
            errors.join("; ")
        );
        // KIC makes every Kong service's host the name of a Kong Upstream entity
        // (`<service>.<namespace>.<port>.svc`, KIC 3.5 subtranslator/ingress.go), which is no
        // DNS name; the response hook calls the service's host itself, bypassing Kong's
        // balancer, so it would answer 502 to every request.
        assert_eq!(
            config.get("enable_response_hook"),
            Some(&Value::Bool(false)),
            "{}: under KIC set enable_response_hook: false (the response hook cannot reach \
             a Kong Upstream entity)",
            p.label
        );
    }
}

#[test]
fn plugin_annotations_name_the_example_s_kong_plugins() {
    let all = manifests();
    let mut ingress = false;
    let mut http_route = false;
    for m in &all {
        for name in m.plugin_annotation() {
            let plugin = all
                .iter()
                .find(|p| p.kind() == "KongPlugin" && p.name() == name && same_namespace(p, m))
                .unwrap_or_else(|| {
                    panic!(
                        "{}: konghq.com/plugins names {name}, not in the example",
                        m.label
                    )
                });
            if is_filter_plugin(plugin) {
                match m.kind() {
                    "Ingress" => ingress = true,
                    "HTTPRoute" => http_route = true,
                    "Service" => {}
                    other => panic!(
                        "{}: the {FILTER} KongPlugin {name} on a {other}: Kong accepts a \
                         Wasm filter plugin only on a service or a route",
                        m.label
                    ),
                }
            }
        }
        match m.kind() {
            "Ingress" => assert_eq!(
                m.str_at(&["spec", "ingressClassName"]),
                Some("kong"),
                "{}: ingressClassName",
                m.label
            ),
            "HTTPRoute" => {
                let parents = at(&m.doc, &["spec", "parentRefs"])
                    .and_then(Yaml::as_sequence)
                    .unwrap_or_else(|| panic!("{}: no parentRefs", m.label));
                for parent in parents {
                    let (name, ns) = (parent["name"].as_str().unwrap(), parent.get("namespace"));
                    let gateway = all
                        .iter()
                        .find(|g| {
                            g.kind() == "Gateway"
                                && g.name() == name
                                && ns
                                    .and_then(Yaml::as_str)
                                    .is_none_or(|ns| g.namespace() == Some(ns))
                        })
                        .unwrap_or_else(|| {
                            panic!("{}: Gateway {name} is not in the example", m.label)
                        });
                    let class = gateway.str_at(&["spec", "gatewayClassName"]).unwrap();
                    let class = all
                        .iter()
                        .find(|c| c.kind() == "GatewayClass" && c.name() == class)
                        .unwrap_or_else(|| {
                            panic!("{}: GatewayClass {class} missing", gateway.label)
                        });
                    assert_eq!(
                        class.str_at(&["spec", "controllerName"]),
                        Some("konghq.com/kic-gateway-controller"),
                        "{}",
                        class.label
                    );
                }
            }
            _ => {}
        }
    }
    assert!(ingress, "no Ingress annotated with the {FILTER} KongPlugin");
    assert!(
        http_route,
        "no HTTPRoute annotated with the {FILTER} KongPlugin"
    );
}

/// `KEY=VALUE` lines of `kong/kong.env`, as Helm `env` keys (`KONG_` dropped, lower case).
fn kong_env() -> Vec<(String, String)> {
    std::fs::read_to_string(root().join("kong/kong.env"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            let k = k.strip_prefix("KONG_").unwrap();
            (k.to_ascii_lowercase(), v.to_string())
        })
        .collect()
}

#[test]
fn helm_values_load_the_filter_into_the_gateway() {
    let files: Vec<String> = yaml_files().into_iter().filter(|f| is_values(f)).collect();
    let readme = read("README.md");
    for file in &files {
        let text = read(file);
        // Helm reads values as YAML 1.1: an unquoted on/off/yes/no becomes a boolean.
        for (n, line) in text.lines().enumerate() {
            if line.trim_start().starts_with('#') {
                continue;
            }
            let code = line.split(" #").next().unwrap_or_default().trim();
            if let Some((_, v)) = code.split_once(": ") {
                assert!(
                    !["on", "off", "yes", "no", "y", "n"]
                        .contains(&v.trim().to_ascii_lowercase().as_str()),
                    "{file}:{}: quote {v:?} (YAML 1.1 reads it as a boolean)",
                    n + 1
                );
            }
        }
        let values: Yaml = serde_yaml::from_str(&text).unwrap();
        let gateway = values
            .get("gateway")
            .unwrap_or_else(|| panic!("{file}: no gateway section (chart kong/ingress)"));

        let repo = at(gateway, &["image", "repository"]).and_then(Yaml::as_str);
        let tag = at(gateway, &["image", "tag"])
            .and_then(Yaml::as_str)
            .unwrap_or_default();
        assert!(
            matches!(repo, Some("kong" | "kong/kong-gateway"))
                && (tag.starts_with("3.9.") || tag.starts_with("3.10.")),
            "{file}: gateway image {repo:?}:{tag}: Kong 3.9.x or 3.10.x (3.11+ has no Wasm)"
        );

        let env = gateway
            .get("env")
            .and_then(Yaml::as_mapping)
            .unwrap_or_else(|| panic!("{file}: no gateway.env"));
        for (k, v) in env {
            assert!(
                v.is_string(),
                "{file}: env.{k:?} must be a string, is {v:?}"
            );
        }
        for (key, value) in kong_env() {
            assert_eq!(
                env.get(key.as_str()).and_then(Yaml::as_str),
                Some(value.as_str()),
                "{file}: gateway.env.{key} (KONG_{} in kong/kong.env)",
                key.to_ascii_uppercase()
            );
        }
        let filters_path = env.get("wasm_filters_path").and_then(Yaml::as_str).unwrap();

        // The filters directory: a ConfigMap (extraConfigMaps), or a user-defined volume
        // filled by an init container.
        let config_maps: Vec<&Yaml> = gateway
            .get("extraConfigMaps")
            .and_then(Yaml::as_sequence)
            .map(|s| s.iter().collect())
            .unwrap_or_default();
        let from_config_map = config_maps
            .iter()
            .find(|c| c["mountPath"].as_str() == Some(filters_path) && c.get("subPath").is_none());
        let mounts = at(gateway, &["deployment", "userDefinedVolumeMounts"])
            .and_then(Yaml::as_sequence)
            .map(|s| s.iter().collect::<Vec<_>>())
            .unwrap_or_default();
        let from_volume = mounts
            .iter()
            .find(|m| m["mountPath"].as_str() == Some(filters_path));
        match (from_config_map, from_volume) {
            (Some(cm), None) => {
                let name = cm["name"].as_str().unwrap();
                let create = format!("kubectl create configmap {name}");
                let documented = readme
                    .lines()
                    .chain(text.lines())
                    .any(|l| l.contains(&create));
                assert!(
                    documented
                        && readme.contains("--from-file=dist/ping_auth.wasm")
                        && readme.contains("--from-file=dist/ping_auth.meta.json"),
                    "{file}: README.md shows `{create}` with both dist files"
                );
            }
            (None, Some(mount)) => {
                let volume = mount["name"].as_str().unwrap();
                let volumes = at(gateway, &["deployment", "userDefinedVolumes"])
                    .and_then(Yaml::as_sequence)
                    .unwrap_or_else(|| panic!("{file}: no deployment.userDefinedVolumes"));
                assert!(
                    volumes.iter().any(|v| v["name"].as_str() == Some(volume)),
                    "{file}: volume {volume} is not defined"
                );
                let inits = at(gateway, &["deployment", "initContainers"])
                    .and_then(Yaml::as_sequence)
                    .unwrap_or_else(|| panic!("{file}: nothing fills volume {volume}"));
                let filler = inits
                    .iter()
                    .find(|c| {
                        c["volumeMounts"]
                            .as_sequence()
                            .is_some_and(|ms| ms.iter().any(|m| m["name"].as_str() == Some(volume)))
                    })
                    .unwrap_or_else(|| panic!("{file}: no init container mounts {volume}"));
                let command = serde_json::to_string(&filler["command"]).unwrap();
                assert!(
                    command.contains("ping_auth.wasm") && command.contains("ping_auth.meta.json"),
                    "{file}: the init container copies both files: {command}"
                );
            }
            _ => panic!("{file}: exactly one volume must be mounted at {filters_path}"),
        }
    }
}
