//! The header maps a filter sees: request headers, response headers and a
//! dispatch response's headers, with the host's pseudo-headers and "shim"
//! headers, and the host's rules for changing them.

use super::api::LogLevel;
use super::builtins::{self, Note};
use super::faults::{self, Crashed};
use super::headers::{HeaderList, MapOp};
use super::state::{Cur, HostCtx, Request, Step, Stream};

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
            let call = ctx.current_call()?;
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
/// exactly, other names case-insensitively. The host's lookup
/// (`ngx_wasm_get_list_elem`) does not skip blanked entries, so after a
/// remove it still finds the old value (the first entry of that name,
/// blanked or not), unlike the whole map.
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
                // Blanked entries are found too (ngx_wasm_get_list_elem).
                _ => req.headers.find_any(key).map(<[u8]>::to_vec),
            }
        }
        MapType::Response => {
            let stream = ctx.cur_stream()?;
            if key == b":status" {
                return (stream.resp.status != 0)
                    .then(|| format!("{:03}", stream.resp.status).into_bytes());
            }
            if let Some(v) = stream.resp.headers.find_any(key) {
                return Some(v.to_vec());
            }
            shims(stream)
                .into_iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        }
        MapType::CallResponse => {
            let call = ctx.current_call()?;
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
/// setters; `:scheme` and `:authority` are read-only. `Err` when the change
/// crashed the worker (a host fault).
pub(crate) fn set(
    ctx: &mut HostCtx,
    map: MapType,
    key: &[u8],
    value: &[u8],
    op: MapOp,
) -> Result<(), Crashed> {
    let Cur::Http { stream: sid, .. } = ctx.cur else {
        return Ok(());
    };
    let mut notes: Vec<Note> = Vec::new();
    {
        let Some(stream) = ctx.streams.get_mut(&sid) else {
            return Ok(());
        };
        match map {
            MapType::Request => match key {
                b":path" | b":method" if op == MapOp::Remove => {
                    notes.push(null_value_fault(key));
                }
                b":path" => set_path(&mut stream.req, value),
                b":method" => stream.req.method = value.to_vec(),
                b":scheme" | b":authority" => notes.push(Note::Log(
                    LogLevel::Error,
                    format!(
                        "cannot set read-only \"{}\" header",
                        String::from_utf8_lossy(key)
                    ),
                )),
                _ => notes.extend(builtins::set_request_header(stream, key, value, op)),
            },
            MapType::Response => {
                if key == b":status" && op == MapOp::Remove {
                    notes.push(null_value_fault(key));
                } else if key == b":status" {
                    let status = std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse::<u16>().ok())
                        .filter(|s| (100..=599).contains(s));
                    match status {
                        Some(s) => {
                            stream.resp.status = s;
                            stream.resp.reason = None;
                        }
                        None => notes.push(Note::Log(
                            LogLevel::Warn,
                            format!(
                                "ignoring attempt to set invalid response status: \"{}\"",
                                String::from_utf8_lossy(value)
                            ),
                        )),
                    }
                } else if let Some(note) =
                    builtins::set_response_header(&mut stream.resp, key, value, op)
                {
                    notes.push(note);
                }
            }
            _ => {}
        }
    }
    apply_notes(ctx, notes)
}

/// Removing a settable pseudo-header hands its setter
/// (`ngx_proxy_wasm_maps_set_path`, `_set_method`, `_set_response_status`)
/// a NULL value, which it reads at once.
fn null_value_fault(key: &[u8]) -> Note {
    Note::Fault(format!(
        "removing the \"{}\" pseudo-header: its setter in ngx_proxy_wasm_maps.c reads the \
         removal's NULL value",
        String::from_utf8_lossy(key)
    ))
}

/// Logs the host's lines; a fault crashes the worker.
pub(crate) fn apply_notes(ctx: &mut HostCtx, notes: Vec<Note>) -> Result<(), Crashed> {
    for note in notes {
        match note {
            Note::Log(level, message) => ctx.host_log(level, message),
            Note::Fault(why) => return Err(faults::crash(ctx, &why)),
        }
    }
    Ok(())
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
