//! The header maps a filter sees: request headers, response headers and a
//! dispatch response's headers, with the host's pseudo-headers and "shim"
//! headers, and the host's rules for changing them.

use super::headers::{escape_name, escape_value, HeaderList};
use super::state::{CallOwner, Cur, HostCtx, Request, Response, Step, Stream};
use super::LogLevel;

/// proxy-wasm map types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapType {
    Request,
    Response,
    CallResponse,
    CallTrailers,
    /// Trailers, gRPC metadata: not implemented by the host.
    Other(i32),
}

impl MapType {
    pub fn from_guest(v: i32) -> Self {
        match v {
            0 => MapType::Request,
            2 => MapType::Response,
            6 => MapType::CallResponse,
            7 => MapType::CallTrailers,
            other => MapType::Other(other),
        }
    }
}

/// How a header is changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MapOp {
    Set,
    Add,
    Remove,
}

/// Request headers nginx keeps a single pointer to: "add" refuses a second one.
const REQ_BUILTINS: [&str; 24] = [
    "Host",
    "Connection",
    "If-Modified-Since",
    "If-Unmodified-Since",
    "If-Match",
    "If-None-Match",
    "User-Agent",
    "Referer",
    "Content-Length",
    "Content-Type",
    "Range",
    "If-Range",
    "Transfer-Encoding",
    "Expect",
    "Upgrade",
    "Accept-Encoding",
    "Via",
    "Authorization",
    "Keep-Alive",
    "X-Real-IP",
    "Depth",
    "Destination",
    "Overwrite",
    "Date",
];

/// Response headers nginx keeps a single pointer to.
const RESP_BUILTINS: [&str; 12] = [
    "Server",
    "Date",
    "Content-Encoding",
    "Location",
    "Refresh",
    "Last-Modified",
    "Content-Range",
    "Accept-Ranges",
    "WWW-Authenticate",
    "Expires",
    "E-Tag",
    "ETag",
];

fn is_one_of(name: &[u8], list: &[&str]) -> bool {
    list.iter().any(|b| b.as_bytes().eq_ignore_ascii_case(name))
}

/// `:path`: nginx `$uri` (decoded, normalised) plus `?args`.
pub(crate) fn pseudo_path(req: &Request) -> Vec<u8> {
    let mut p = req.uri.clone();
    if !req.args.is_empty() {
        p.push(b'?');
        p.extend_from_slice(&req.args);
    }
    p
}

/// `:authority`: the listener's server name and port (not the Host header).
pub(crate) fn pseudo_authority(ctx: &HostCtx, req: &Request) -> Vec<u8> {
    let name = if ctx.opts.server_name.is_empty() {
        ctx.hostname.clone()
    } else {
        ctx.opts.server_name.clone()
    };
    if req.server_port == 0 {
        name.into_bytes()
    } else {
        format!("{name}:{}", req.server_port).into_bytes()
    }
}

pub(crate) fn scheme(req: &Request) -> &'static str {
    if req.tls {
        "https"
    } else {
        "http"
    }
}

/// The shim headers nginx adds late (during and after `on_response_headers`).
pub(crate) fn shims(stream: &Stream) -> Vec<(Vec<u8>, Vec<u8>)> {
    let resp = &stream.resp;
    let mut out = Vec::new();
    if let Some(ct) = resp.content_type.as_ref().filter(|c| !c.is_empty()) {
        out.push((b"Content-Type".to_vec(), ct.clone()));
    }
    let has_cl = resp.headers.contains(b"Content-Length");
    if !has_cl && resp.content_length_n >= 0 {
        out.push((
            b"Content-Length".to_vec(),
            resp.content_length_n.to_string().into_bytes(),
        ));
    }
    if !has_cl && resp.content_length_n < 0 {
        out.push((b"Transfer-Encoding".to_vec(), b"chunked".to_vec()));
    }
    let connection: &[u8] = if resp.status == 101 {
        b"upgrade"
    } else if resp.keepalive {
        b"keep-alive"
    } else {
        b"close"
    };
    out.push((b"Connection".to_vec(), connection.to_vec()));
    out
}

/// The owner of the running call and the call's result, for call maps.
fn current_call(ctx: &HostCtx) -> Option<&super::net::CallResult> {
    let token = match ctx.cur {
        Cur::Http { stream, exec } => ctx
            .streams
            .get(&stream)
            .and_then(|s| s.pw.execs.get(exec))
            .and_then(|e| e.dispatch_call),
        Cur::Root { root } => ctx.roots.get(root).and_then(|r| r.dispatch_call),
        Cur::None => None,
    }?;
    let call = ctx.calls.get(&token)?;
    match call.owner {
        CallOwner::Http { .. } | CallOwner::Root { .. } => call.result.as_ref(),
    }
}

/// Every pair of a map, pseudo-headers first (`get_header_map_pairs`).
/// `None` when the map does not exist here (the host answers BadArgument).
pub(crate) fn get_all(ctx: &HostCtx, map: MapType) -> Option<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    match map {
        MapType::Request => {
            let stream = ctx.cur_stream()?;
            let req = &stream.req;
            out.push((b":path".to_vec(), pseudo_path(req)));
            if !req.method.is_empty() {
                out.push((b":method".to_vec(), req.method.clone()));
            }
            out.push((b":scheme".to_vec(), scheme(req).as_bytes().to_vec()));
            out.push((b":authority".to_vec(), pseudo_authority(ctx, req)));
            push_list(&mut out, &req.headers);
        }
        MapType::Response => {
            let stream = ctx.cur_stream()?;
            if stream.resp.status != 0 {
                out.push((
                    b":status".to_vec(),
                    format!("{:03}", stream.resp.status).into_bytes(),
                ));
            }
            if matches!(
                stream.pw.step,
                Step::RespHeaders | Step::RespBody | Step::Log
            ) {
                out.extend(shims(stream));
            }
            push_list(&mut out, &stream.resp.headers);
        }
        MapType::CallResponse => {
            let call = current_call(ctx)?;
            if call.status_code != 0 {
                out.push((
                    b":status".to_vec(),
                    format!("{:03}", call.status_code).into_bytes(),
                ));
            }
            out.push((
                b":dispatch_status".to_vec(),
                call.status.as_str().as_bytes().to_vec(),
            ));
            push_list(&mut out, &call.headers);
        }
        MapType::CallTrailers | MapType::Other(_) => return None,
    }
    Some(out)
}

fn push_list(out: &mut Vec<(Vec<u8>, Vec<u8>)>, list: &HeaderList) {
    for (n, v) in list.iter() {
        out.push((n.to_vec(), v.to_vec()));
    }
}

/// One value of a map (`get_header_map_value`): pseudo-headers match
/// exactly, other names case-insensitively.
pub(crate) fn get_one(ctx: &HostCtx, map: MapType, key: &[u8]) -> Option<Vec<u8>> {
    match map {
        MapType::Request => {
            let stream = ctx.cur_stream()?;
            let req = &stream.req;
            match key {
                b":path" => Some(pseudo_path(req)),
                b":method" => Some(req.method.clone()),
                b":scheme" => Some(scheme(req).as_bytes().to_vec()),
                b":authority" => Some(pseudo_authority(ctx, req)),
                _ => req.headers.get(key).map(<[u8]>::to_vec),
            }
        }
        MapType::Response => {
            let stream = ctx.cur_stream()?;
            if key == b":status" {
                return (stream.resp.status != 0)
                    .then(|| format!("{:03}", stream.resp.status).into_bytes());
            }
            if let Some(v) = stream.resp.headers.get(key) {
                return Some(v.to_vec());
            }
            shims(stream)
                .into_iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        }
        MapType::CallResponse => {
            let call = current_call(ctx)?;
            match key {
                b":status" => {
                    (call.status_code != 0).then(|| format!("{:03}", call.status_code).into_bytes())
                }
                b":dispatch_status" => Some(call.status.as_str().as_bytes().to_vec()),
                _ => call.headers.get(key).map(<[u8]>::to_vec),
            }
        }
        MapType::CallTrailers | MapType::Other(_) => None,
    }
}

/// Whether the running step may change this map; `Err(trap message)` when
/// the host traps, `Ok(false)` when the map type is not supported.
pub(crate) fn check_set(ctx: &HostCtx, map: MapType) -> Result<bool, String> {
    let Some(stream) = ctx.cur_stream() else {
        return Ok(false);
    };
    let step = stream.pw.step;
    match map {
        MapType::Request => match step {
            Step::ReqHeaders | Step::ReqBody => Ok(true),
            Step::DispatchResponse if !stream.entered_header_filter => Ok(true),
            _ => Err(
                "host trap (bad usage): can only set request headers before response is produced"
                    .to_string(),
            ),
        },
        MapType::Response => match step {
            Step::ReqHeaders | Step::ReqBody | Step::RespHeaders => Ok(true),
            Step::DispatchResponse if !stream.resp.header_sent => Ok(true),
            _ => Err(
                "host trap (bad usage): can only set response headers before \"on_response_body\""
                    .to_string(),
            ),
        },
        _ => Ok(false),
    }
}

/// Changes a map entry (after [`check_set`]). Pseudo-headers have their own
/// setters; `:scheme` and `:authority` are read-only.
pub(crate) fn set(ctx: &mut HostCtx, map: MapType, key: &[u8], value: &[u8], op: MapOp) {
    let Cur::Http { stream: sid, .. } = ctx.cur else {
        return;
    };
    let mut errors: Vec<String> = Vec::new();
    {
        let Some(stream) = ctx.streams.get_mut(&sid) else {
            return;
        };
        match map {
            MapType::Request => match key {
                b":path" if op != MapOp::Remove => set_path(&mut stream.req, value),
                b":method" if op != MapOp::Remove => stream.req.method = value.to_vec(),
                b":path" | b":method" => {}
                b":scheme" | b":authority" => errors.push(format!(
                    "cannot set read-only \"{}\" header",
                    String::from_utf8_lossy(key)
                )),
                _ => {
                    if let Err(e) = set_request_header(&mut stream.req, key, value, op) {
                        errors.push(e);
                    }
                }
            },
            MapType::Response => {
                if key == b":status" {
                    if op != MapOp::Remove {
                        let status = std::str::from_utf8(value)
                            .ok()
                            .and_then(|s| s.parse::<u16>().ok())
                            .filter(|s| (100..=599).contains(s));
                        match status {
                            Some(s) => {
                                stream.resp.status = s;
                                stream.resp.reason = None;
                            }
                            None => errors.push(format!(
                                "ignoring attempt to set invalid response status: \"{}\"",
                                String::from_utf8_lossy(value)
                            )),
                        }
                    }
                } else if let Err(e) = set_response_header(&mut stream.resp, key, value, op) {
                    errors.push(e);
                }
            }
            _ => {}
        }
    }
    for e in errors {
        let level = if e.starts_with("ignoring") {
            LogLevel::Warn
        } else {
            LogLevel::Error
        };
        ctx.host_log(level, e);
    }
}

/// Setting `:path`: the part before `?` becomes `$uri`, the rest `$args`.
fn set_path(req: &mut Request, value: &[u8]) {
    match value.iter().position(|&b| b == b'?') {
        Some(q) => {
            req.uri = value.get(..q).unwrap_or_default().to_vec();
            req.args = value.get(q + 1..).unwrap_or_default().to_vec();
        }
        None => req.uri = value.to_vec(),
    }
    req.uri_changed = true;
}

/// Changes a request header with nginx's rules for builtin headers.
pub(crate) fn set_request_header(
    req: &mut Request,
    key: &[u8],
    value: &[u8],
    op: MapOp,
) -> Result<(), String> {
    let key = escape_name(key);
    let value = escape_value(value);
    let builtin = is_one_of(&key, &REQ_BUILTINS);
    apply_op(&mut req.headers, &key, &value, op, builtin, "request")
}

/// Changes a response header with nginx's rules: `Content-Type` is kept
/// aside, `Content-Length` is parsed, `Connection` only changes keep-alive.
pub(crate) fn set_response_header(
    resp: &mut Response,
    key: &[u8],
    value: &[u8],
    op: MapOp,
) -> Result<(), String> {
    let key = escape_name(key);
    let value = escape_value(value);
    if key.eq_ignore_ascii_case(b"Content-Type") {
        resp.content_type = match op {
            MapOp::Remove => None,
            _ => Some(value),
        };
        return Ok(());
    }
    if key.eq_ignore_ascii_case(b"Connection") {
        if op == MapOp::Remove {
            return Ok(());
        }
        let lower = String::from_utf8_lossy(&value).to_ascii_lowercase();
        if lower.contains("keep-alive") {
            resp.keepalive = true;
        } else if lower.contains("close") {
            resp.keepalive = false;
        } else if lower.contains("upgrade") {
            resp.status = 101;
        } else {
            return Err(format!(
                "attempt to set invalid Connection response header: \"{}\"",
                String::from_utf8_lossy(&value)
            ));
        }
        return Ok(());
    }
    if key.eq_ignore_ascii_case(b"Content-Length") {
        if op == MapOp::Remove {
            resp.content_length_n = -1;
            resp.headers.remove(&key);
            return Ok(());
        }
        let parsed = std::str::from_utf8(&value)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<i64>().ok());
        let Some(len) = parsed else {
            return Err(format!(
                "attempt to set invalid Content-Length response header: \"{}\"",
                String::from_utf8_lossy(&value)
            ));
        };
        if op == MapOp::Add && resp.headers.contains(&key) {
            return Err("cannot add new \"Content-Length\" builtin response header".to_string());
        }
        resp.headers.set_first(&key, &value);
        resp.content_length_n = len;
        return Ok(());
    }
    let builtin = is_one_of(&key, &RESP_BUILTINS);
    apply_op(&mut resp.headers, &key, &value, op, builtin, "response")
}

/// One header operation. nginx keeps a single entry for its builtin headers:
/// they are set or removed in place, and adding a second one fails.
fn apply_op(
    headers: &mut HeaderList,
    key: &[u8],
    value: &[u8],
    op: MapOp,
    builtin: bool,
    kind: &str,
) -> Result<(), String> {
    match op {
        MapOp::Remove if builtin => headers.remove_first(key),
        MapOp::Remove => {
            headers.remove(key);
        }
        MapOp::Add if builtin && headers.contains(key) => {
            return Err(format!(
                "cannot add new \"{}\" builtin {kind} header",
                String::from_utf8_lossy(key)
            ));
        }
        MapOp::Add => headers.add(key, value),
        MapOp::Set if builtin => headers.set_first(key, value),
        MapOp::Set => headers.set(key, value),
    }
    Ok(())
}
