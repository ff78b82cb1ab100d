//! `proxy_get_property` / `proxy_set_property`.
//!
//! Paths are NUL-separated segments (`request\0path`). The host serves
//! the standard attributes (`request.*`, `source.*`, ...) from nginx
//! variables, `ngx.<variable>` directly, and, inside Kong, `kong.*` through
//! Kong's Lua handlers. Outside of a request (root contexts) any path with a
//! dot is refused.

use super::api::{self, HttpVersion, LogLevel};
use super::kong;
use super::maps::{self, MapType};
use super::state::{Cur, HostCtx, Stream};
use std::time::SystemTime;

/// The outcome of a property access.
pub(crate) enum Prop {
    Value(Vec<u8>),
    NotFound,
    /// The host answers `InternalFailure`.
    Error,
    /// The host traps with this message.
    Trap(String),
}

/// `a\0b\0c` → `a.b.c`
pub(crate) fn dotted(path: &[u8]) -> String {
    let replaced: Vec<u8> = path
        .iter()
        .map(|&b| if b == 0 { b'.' } else { b })
        .collect();
    String::from_utf8_lossy(&replaced).into_owned()
}

/// Standard attributes served from nginx variables.
fn mapped_variable(path: &str) -> Option<&'static str> {
    Some(match path {
        "request.path" => "request_uri",
        "request.url_path" => "uri",
        "request.host" => "hostname",
        "request.scheme" => "scheme",
        "request.method" => "request_method",
        "request.useragent" => "http_user_agent",
        "request.protocol" => "server_protocol",
        "request.query" => "args",
        "request.duration" => "request_time",
        "request.size" => "content_length",
        "request.total_size" => "request_length",
        "response.code" => "status",
        "response.size" => "body_bytes_sent",
        "response.total_size" => "bytes_sent",
        "destination.address" => "proxy_protocol_addr",
        "destination.port" => "proxy_protocol_port",
        "connection.requested_server_name" => "ssl_server_name",
        "connection.tls_version" => "ssl_protocol",
        "connection.subject_local_certificate" => "ssl_client_s_dn",
        "source.address" => "remote_addr",
        "source.port" => "remote_port",
        _ => return None,
    })
}

const NYI: [&str; 16] = [
    "response.grpc_status",
    "response.trailers",
    "upstream.tls_version",
    "upstream.subject_local_certificate",
    "upstream.subject_peer_certificate",
    "upstream.dns_san_local_certificate",
    "upstream.dns_san_peer_certificate",
    "upstream.uri_san_local_certificate",
    "upstream.uri_san_peer_certificate",
    "upstream.sha256_peer_certificate_digest",
    "upstream.local_address",
    "upstream.transport_failure_reason",
    "connection.subject_peer_certificate",
    "connection.dns_san_local_certificate",
    "connection.dns_san_peer_certificate",
    "plugin_vm_id",
];

const NOT_SUPPORTED: [&str; 12] = [
    "response.code_details",
    "response.flags",
    "connection.termination_details",
    "node",
    "cluster_name",
    "cluster_metadata",
    "listener_direction",
    "listener_metadata",
    "route_name",
    "route_metadata",
    "upstream_host_metadata",
    "connection.uri_san_local_certificate",
];

pub(crate) fn get(ctx: &mut HostCtx, path: &[u8]) -> Prop {
    let p = dotted(path);
    let sid = match ctx.cur {
        Cur::Http { stream, .. } => Some(stream),
        _ => None,
    };
    if sid.is_none() && p.contains('.') {
        ctx.host_log(
            LogLevel::Error,
            "cannot get scoped properties outside of a request",
        );
        return Prop::Error;
    }
    match p.as_str() {
        "plugin_name" => return Prop::Value(plugin_name(ctx).into_bytes()),
        // The host formats a cached string field as an integer: always "0".
        "plugin_root_id" => return Prop::Value(b"0".to_vec()),
        _ => {}
    }
    if NYI.contains(&p.as_str()) || p == "connection.uri_san_peer_certificate" {
        ctx.host_log(LogLevel::Warn, format!("NYI - \"{p}\" property"));
        return Prop::NotFound;
    }
    if NOT_SUPPORTED.contains(&p.as_str()) {
        ctx.host_log(LogLevel::Error, format!("\"{p}\" property not supported"));
        return Prop::NotFound;
    }
    let Some(sid) = sid else {
        return Prop::NotFound;
    };
    if let Some(var) = mapped_variable(&p) {
        return found(ctx.streams.get(&sid).and_then(|s| ngx_var(ctx, s, var)));
    }
    match p.as_str() {
        "request.id" => return found(maps::get_one(ctx, MapType::Request, b"x-request-id")),
        "request.referer" => return found(maps::get_one(ctx, MapType::Request, b"referer")),
        "request.time" => {
            let start = ctx.streams.get(&sid).map(|s| s.req.start);
            let t = start
                .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                .map(|d| format!("{}.{:03}", d.as_secs(), d.subsec_millis()));
            return found(t.map(String::into_bytes));
        }
        "request.is_subrequest" => return Prop::Value(b"false".to_vec()),
        "connection.id" => return Prop::Value(sid.to_string().into_bytes()),
        "connection.mtls" => {
            let on = ctx
                .streams
                .get(&sid)
                .is_some_and(|s| s.req.tls && s.req.client_cert_pem.is_some());
            return Prop::Value(if on {
                b"true".to_vec()
            } else {
                b"false".to_vec()
            });
        }
        "upstream.address" | "upstream.port" => {
            let addr = ctx
                .streams
                .get(&sid)
                .and_then(|s| s.resp.upstream_addr.clone());
            let part = addr.and_then(|a| {
                let (host, port) = a.rsplit_once(':')?;
                Some(if p == "upstream.address" {
                    host.to_string()
                } else {
                    port.to_string()
                })
            });
            return found(part.map(String::into_bytes));
        }
        _ => {}
    }
    if let Some(name) = p.strip_prefix("request.headers.") {
        return found(maps::get_one(ctx, MapType::Request, name.as_bytes()));
    }
    if let Some(name) = p.strip_prefix("response.headers.") {
        return found(maps::get_one(ctx, MapType::Response, name.as_bytes()));
    }
    if let Some(name) = p.strip_prefix("ngx.") {
        if name.is_empty() {
            return Prop::NotFound;
        }
        return found(ctx.streams.get(&sid).and_then(|s| ngx_var(ctx, s, name)));
    }
    if ctx.opts.kong {
        if p.starts_with("kong.") {
            return kong_get(ctx, sid, &p);
        }
    } else if p.starts_with("wasmx.") {
        return found(
            ctx.streams
                .get(&sid)
                .and_then(|s| s.req.host_props.get(&p).cloned()),
        );
    }
    Prop::NotFound
}

fn found(v: Option<Vec<u8>>) -> Prop {
    match v {
        Some(v) => Prop::Value(v),
        None => Prop::NotFound,
    }
}

/// The filter name: the host reads it from the chain's current index, not
/// from the filter actually running.
fn plugin_name(ctx: &HostCtx) -> String {
    match ctx.cur {
        Cur::Root { root } => ctx
            .roots
            .get(root)
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        Cur::Http { stream, exec } => {
            let Some(s) = ctx.streams.get(&stream) else {
                return String::new();
            };
            let e =
                s.pw.execs
                    .get(s.pw.exec_index)
                    .or_else(|| s.pw.execs.get(exec));
            e.and_then(|e| ctx.roots.get(e.root))
                .map(|r| r.name.clone())
                .unwrap_or_default()
        }
        Cur::None => String::new(),
    }
}

pub(crate) fn set(ctx: &mut HostCtx, path: &[u8], value: Option<&[u8]>) -> Prop {
    let p = dotted(path);
    let sid = match ctx.cur {
        Cur::Http { stream, .. } => Some(stream),
        _ => None,
    };
    if sid.is_none() && p.contains('.') {
        ctx.host_log(
            LogLevel::Error,
            "cannot set scoped properties outside of a request",
        );
        return Prop::Error;
    }
    let Some(sid) = sid else {
        return Prop::NotFound;
    };
    if let Some(name) = p.strip_prefix("ngx.") {
        return set_ngx(ctx, sid, name, value);
    }
    if let Some(var) = mapped_variable(&p) {
        return set_ngx(ctx, sid, var, value);
    }
    if ctx.opts.kong {
        if p.starts_with("kong.") {
            return kong_set(ctx, sid, &p, value);
        }
    } else if p.starts_with("wasmx.") {
        if let Some(s) = ctx.streams.get_mut(&sid) {
            match value {
                Some(v) => {
                    s.req.host_props.insert(p, v.to_vec());
                }
                None => {
                    s.req.host_props.remove(&p);
                }
            }
        }
        return Prop::Value(Vec::new());
    }
    Prop::NotFound
}

/// Kong's `set` variables in `location /` and nginx's own changeable ones.
fn changeable(ctx: &HostCtx, name: &str) -> bool {
    const KONG_SET: [&str; 15] = [
        "ctx_ref",
        "upstream_te",
        "upstream_via",
        "upstream_host",
        "upstream_upgrade",
        "upstream_connection",
        "upstream_scheme",
        "upstream_uri",
        "upstream_x_forwarded_for",
        "upstream_x_forwarded_proto",
        "upstream_x_forwarded_host",
        "upstream_x_forwarded_port",
        "upstream_x_forwarded_path",
        "upstream_x_forwarded_prefix",
        "kong_proxy_mode",
    ];
    name == "args" || name == "limit_rate" || (ctx.opts.kong && KONG_SET.contains(&name))
}

/// nginx variables that exist but cannot be set (the non-prefixed ones).
const KNOWN_VARS: [&str; 58] = [
    "host",
    "hostname",
    "uri",
    "document_uri",
    "request_uri",
    "request",
    "request_method",
    "request_length",
    "request_time",
    "request_id",
    "request_body",
    "request_completion",
    "query_string",
    "is_args",
    "scheme",
    "https",
    "server_protocol",
    "server_name",
    "server_addr",
    "server_port",
    "remote_addr",
    "remote_port",
    "remote_user",
    "binary_remote_addr",
    "realip_remote_addr",
    "realip_remote_port",
    "proxy_protocol_addr",
    "proxy_protocol_port",
    "content_length",
    "content_type",
    "status",
    "body_bytes_sent",
    "bytes_sent",
    "connection",
    "connection_requests",
    "msec",
    "time_local",
    "time_iso8601",
    "nginx_version",
    "pid",
    "pipe",
    "ssl_client_raw_cert",
    "ssl_client_escaped_cert",
    "ssl_client_cert",
    "ssl_client_s_dn",
    "ssl_client_i_dn",
    "ssl_client_verify",
    "ssl_protocol",
    "ssl_cipher",
    "ssl_server_name",
    "ssl_session_id",
    "upstream_addr",
    "upstream_status",
    "upstream_response_time",
    "upstream_response_length",
    "upstream_connect_time",
    "kong_request_id",
    "proxy_host",
];

fn set_ngx(ctx: &mut HostCtx, sid: u64, name: &str, value: Option<&[u8]>) -> Prop {
    if changeable(ctx, name) {
        let Some(s) = ctx.streams.get_mut(&sid) else {
            return Prop::NotFound;
        };
        if name == "args" {
            s.req.args = value.map(<[u8]>::to_vec).unwrap_or_default();
            s.req.uri_changed = true;
        } else if name != "limit_rate" {
            s.req
                .set_vars
                .insert(name.to_string(), value.map(<[u8]>::to_vec));
        }
        return Prop::Value(Vec::new());
    }
    let kong_set_var =
        ctx.opts.kong && (name.starts_with("upstream_") && !KNOWN_VARS.contains(&name));
    if KNOWN_VARS.contains(&name) || kong_set_var {
        ctx.host_log(
            LogLevel::Error,
            format!("variable \"{name}\" is not changeable"),
        );
        return Prop::Error;
    }
    Prop::NotFound
}

/// `$host`: the Host header without port, lower-cased, or the server name.
/// A forwarded header's first value when the client is in `trusted_ips`
/// (Kong's PDK `get_forwarded_*` rule).
fn trusted_forwarded(ctx: &HostCtx, s: &Stream, name: &[u8]) -> Option<String> {
    if !ctx.opts.trusted_ips.contains(&s.req.client_addr.ip()) {
        return None;
    }
    let v = s.req.headers.get(name)?;
    let v = String::from_utf8_lossy(v);
    let first = v.split(',').next().unwrap_or("").trim().to_string();
    (!first.is_empty()).then_some(first)
}

/// `X-Forwarded-Host` without `user@` and port, lower-cased, and its port.
fn forwarded_host_port(v: &str) -> (String, Option<String>) {
    let v = v
        .rsplit_once('@')
        .map_or(v, |(_, h)| h)
        .to_ascii_lowercase();
    match v.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || v.starts_with('[') => {
            (h.to_string(), Some(p.to_string()))
        }
        _ => (v, None),
    }
}

pub(crate) fn host_var(ctx: &HostCtx, s: &Stream) -> String {
    match s.req.headers.get(b"host") {
        Some(h) => {
            let h = String::from_utf8_lossy(h).to_ascii_lowercase();
            let h = if h.starts_with('[') {
                h.split_once(']')
                    .map(|(a, _)| format!("{a}]"))
                    .unwrap_or(h.clone())
            } else {
                h.split(':').next().unwrap_or("").to_string()
            };
            h.trim_end_matches('.').to_string()
        }
        None => ctx.opts.server_name.clone(),
    }
}

/// All values of a request header joined the way nginx joins them
/// (`, `, or `; ` for Cookie).
fn joined_header(s: &Stream, name: &str) -> Option<Vec<u8>> {
    let values = s.req.headers.get_all(name.as_bytes());
    if values.is_empty() {
        return None;
    }
    let sep: &[u8] = if name.eq_ignore_ascii_case("cookie") {
        b"; "
    } else {
        b", "
    };
    Some(values.join(sep))
}

fn percent_escape(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in input {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// An nginx variable's value for this request; `None` when not found.
pub(crate) fn ngx_var(ctx: &HostCtx, s: &Stream, name: &str) -> Option<Vec<u8>> {
    let req = &s.req;
    let text = |t: String| Some(t.into_bytes());
    if let Some(h) = name.strip_prefix("http_") {
        return joined_header(s, &h.replace('_', "-"));
    }
    if let Some(h) = name.strip_prefix("sent_http_") {
        let h = h.replace('_', "-");
        if h.eq_ignore_ascii_case("content-type") {
            return s.resp.content_type.clone();
        }
        let v = s.resp.headers.get_all(h.as_bytes());
        return (!v.is_empty()).then(|| v.join(&b", "[..]));
    }
    if let Some(h) = name.strip_prefix("upstream_http_") {
        let v = s
            .resp
            .upstream_headers
            .get_all(h.replace('_', "-").as_bytes());
        return (!v.is_empty()).then(|| v.join(&b", "[..]));
    }
    if let Some(arg) = name.strip_prefix("arg_") {
        return req.args.split(|&b| b == b'&').find_map(|pair| {
            let mut it = pair.splitn(2, |&b| b == b'=');
            let k = it.next()?;
            k.eq_ignore_ascii_case(arg.as_bytes())
                .then(|| it.next().unwrap_or_default().to_vec())
        });
    }
    if let Some(cookie) = name.strip_prefix("cookie_") {
        let all = joined_header(s, "cookie")?;
        return String::from_utf8_lossy(&all).split(';').find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k == cookie).then(|| v.as_bytes().to_vec())
        });
    }
    if let Some(v) = req.set_vars.get(name) {
        return v.clone();
    }
    let elapsed = req.started_at.elapsed();
    match name {
        "host" => text(host_var(ctx, s)),
        "hostname" => text(ctx.hostname.clone()),
        "uri" | "document_uri" => Some(req.uri.clone()),
        "request_uri" => Some(req.request_uri.clone()),
        "request" => {
            let mut line = req.method.clone();
            line.push(b' ');
            line.extend_from_slice(&req.request_uri);
            line.push(b' ');
            line.extend_from_slice(protocol(req.version).as_bytes());
            Some(line)
        }
        "request_method" => Some(req.method.clone()),
        "args" | "query_string" => Some(req.args.clone()),
        "is_args" => Some(if req.args.is_empty() {
            Vec::new()
        } else {
            b"?".to_vec()
        }),
        "scheme" => text(maps::scheme(req).to_string()),
        "https" => Some(if req.tls { b"on".to_vec() } else { Vec::new() }),
        "server_protocol" => text(protocol(req.version).to_string()),
        "server_name" => text(ctx.opts.server_name.clone()),
        "server_addr" => text("127.0.0.1".to_string()),
        "server_port" => text(req.server_port.to_string()),
        "remote_addr" | "realip_remote_addr" => text(req.client_addr.ip().to_string()),
        "remote_port" | "realip_remote_port" => text(req.client_addr.port().to_string()),
        "binary_remote_addr" => Some(match req.client_addr.ip() {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        }),
        // ngx_http_variable_content_length reads the slot's entry, removed
        // (blanked) or not.
        "content_length" => req
            .headers
            .slot("content_length")
            .and_then(|i| req.headers.entry(i))
            .map(|h| h.value.clone()),
        "content_type" => req.headers.get(b"content-type").map(<[u8]>::to_vec),
        "request_length" => text((req.header_bytes + req.body.len()).to_string()),
        "request_time" => text(format!(
            "{}.{:03}",
            elapsed.as_secs(),
            elapsed.subsec_millis()
        )),
        "request_id" => text(req.request_id.clone()),
        "kong_request_id" if ctx.opts.kong => text(s.kong_request_id.clone()),
        "request_body" => (!req.body.is_empty() && !req.spooled).then(|| req.body.clone()),
        "status" => text(format!("{:03}", s.resp.status)),
        "body_bytes_sent" => text(s.resp.body_sent.len().to_string()),
        "bytes_sent" => text(if s.resp.header_sent {
            (s.resp.body_sent.len() + 200).to_string()
        } else {
            "0".to_string()
        }),
        "connection" => text(s.id.to_string()),
        "connection_requests" => text("1".to_string()),
        "msec" => {
            let now = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default();
            text(format!("{}.{:03}", now.as_secs(), now.subsec_millis()))
        }
        "nginx_version" => text("1.27.1".to_string()),
        "pid" => text(std::process::id().to_string()),
        "ssl_client_raw_cert" if req.tls => req.client_cert_pem.clone().map(String::into_bytes),
        "ssl_client_escaped_cert" if req.tls => req
            .client_cert_pem
            .as_ref()
            .map(|c| percent_escape(c.as_bytes())),
        "ssl_client_verify" if req.tls => Some(if req.client_cert_pem.is_some() {
            b"SUCCESS".to_vec()
        } else {
            b"NONE".to_vec()
        }),
        "ssl_protocol" if req.tls => Some(b"TLSv1.3".to_vec()),
        "ssl_server_name" if req.tls => Some(host_var(ctx, s).into_bytes()),
        "upstream_addr" => s.resp.upstream_addr.clone().map(String::into_bytes),
        "upstream_status" => s.resp.upstream_status.map(|c| c.to_string().into_bytes()),
        _ => None,
    }
}

fn protocol(v: HttpVersion) -> &'static str {
    match v {
        HttpVersion::Http10 => "HTTP/1.0",
        HttpVersion::Http11 => "HTTP/1.1",
        HttpVersion::Http2 => "HTTP/2.0",
    }
}

/// `kong.*` getters (Kong's `register_property_handlers`).
fn kong_get(ctx: &mut HostCtx, sid: u64, p: &str) -> Prop {
    let Some(s) = ctx.streams.get(&sid) else {
        return Prop::NotFound;
    };
    let chain = ctx.chains.get(s.chain);
    let text = |t: String| Prop::Value(t.into_bytes());
    match p {
        "kong.client.protocol" => text(maps::scheme(&s.req).to_string()),
        "kong.nginx.subsystem" => text("http".to_string()),
        "kong.node.id" => text(api::uuid_from(ctx.hostname.as_bytes(), 0x4e)),
        "kong.node.memory_stats" => Prop::Value(
            br#"{"lua_shared_dicts":{},"workers_lua_vms":[{"http_allocated_gc":0,"pid":0}]}"#
                .to_vec(),
        ),
        "kong.request.forwarded_host" => text(
            trusted_forwarded(ctx, s, b"x-forwarded-host")
                .map(|h| forwarded_host_port(&h).0)
                .unwrap_or_else(|| host_var(ctx, s)),
        ),
        "kong.request.forwarded_port" => text(
            trusted_forwarded(ctx, s, b"x-forwarded-port")
                .filter(|p| p.parse::<u16>().is_ok_and(|n| n > 0))
                .or_else(|| {
                    trusted_forwarded(ctx, s, b"x-forwarded-host")
                        .and_then(|h| forwarded_host_port(&h).1)
                })
                .unwrap_or_else(|| s.req.server_port.to_string()),
        ),
        "kong.request.port" => text(s.req.server_port.to_string()),
        "kong.request.forwarded_scheme" => text(
            trusted_forwarded(ctx, s, b"x-forwarded-proto")
                .map(|p| p.to_ascii_lowercase())
                .unwrap_or_else(|| maps::scheme(&s.req).to_string()),
        ),
        "kong.response.source" => Prop::Trap(
            "could not get \"kong.response.source\": error in property getter: \
             kong/runloop/wasm.lua:795: attempt to call field 'get_source' (a nil value)"
                .to_string(),
        ),
        "kong.router.route" => match chain {
            Some(c) => Prop::Value(kong::route_json(&c.route, &c.service)),
            None => Prop::NotFound,
        },
        "kong.router.service" => match chain {
            Some(c) => Prop::Value(kong::service_json(&c.service)),
            None => Prop::NotFound,
        },
        "kong.route_id" => chain.map_or(Prop::NotFound, |c| text(c.route.id.clone())),
        "kong.route_name" => chain.map_or(Prop::NotFound, |c| text(c.route.name.clone())),
        "kong.service_id" => chain.map_or(Prop::NotFound, |c| text(c.service.id.clone())),
        "kong.service_name" => chain.map_or(Prop::NotFound, |c| text(c.service.name.clone())),
        "kong.service.response.status" => {
            found(s.resp.upstream_status.map(|c| c.to_string().into_bytes()))
        }
        "kong.version" => text(ctx.opts.kong_version.clone()),
        _ => {
            if let Some(key) = p.strip_prefix("kong.ctx.shared.") {
                return found(s.kong_shared.get(key).cloned());
            }
            if let Some(key) = p.strip_prefix("kong.configuration.") {
                let v = match key {
                    "log_level" => Some("notice"),
                    "router_flavor" => Some("traditional_compatible"),
                    "wasm" => Some("true"),
                    "role" => Some("traditional"),
                    "database" => Some("off"),
                    "proxy_listen" => Some("0.0.0.0:8000"),
                    _ => None,
                };
                return found(v.map(|v| v.as_bytes().to_vec()));
            }
            Prop::NotFound
        }
    }
}

/// `kong.*` setters. A refused value (or an unknown property) makes the host
/// trap with "could not set ...".
fn kong_set(ctx: &mut HostCtx, sid: u64, p: &str, value: Option<&[u8]>) -> Prop {
    let trap = |err: &str| Prop::Trap(format!("could not set \"{p}\": {err}"));
    let Some(s) = ctx.streams.get_mut(&sid) else {
        return Prop::NotFound;
    };
    let text = value.map(|v| String::from_utf8_lossy(v).into_owned());
    match p {
        "kong.service.target" => {
            let parsed = text.as_deref().and_then(|t| {
                let (host, port) = t.rsplit_once(':')?;
                let port: u16 = port.parse().ok()?;
                (!host.is_empty()).then(|| (host.to_string(), port))
            });
            match parsed {
                Some(target) => {
                    s.kong_target = Some(target);
                    Prop::Value(Vec::new())
                }
                None => trap("unknown error"),
            }
        }
        "kong.service.request.scheme" => match text.as_deref() {
            Some("http") | Some("https") => {
                s.kong_scheme = text.clone();
                Prop::Value(Vec::new())
            }
            _ => trap("error in property setter: invalid scheme"),
        },
        "kong.response.status" => {
            let status = text.as_deref().and_then(|t| t.parse::<u16>().ok());
            match status {
                Some(code) if (100..=599).contains(&code) && !s.resp.header_sent => {
                    s.resp.status = code;
                    Prop::Value(Vec::new())
                }
                _ => trap("error in property setter: code must be a number between 100 and 599"),
            }
        }
        "kong.service.upstream" => trap("unknown error"),
        _ => {
            if let Some(key) = p.strip_prefix("kong.ctx.shared.") {
                match value {
                    Some(v) => {
                        s.kong_shared.insert(key.to_string(), v.to_vec());
                    }
                    None => {
                        s.kong_shared.remove(key);
                    }
                }
                return Prop::Value(Vec::new());
            }
            trap("unknown error")
        }
    }
}
