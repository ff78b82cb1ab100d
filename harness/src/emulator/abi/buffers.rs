//! Buffers: reading and replacing the request body, the response body
//! chunk and a dispatch response's body (`proxy_get_buffer`,
//! `proxy_set_buffer`), and the filter's configuration
//! (`proxy_get_configuration`).

use super::common::{
    bad_usage, check_u32, count, crashed, read, return_bytes, BAD_ARGUMENT, C, INTERNAL_FAILURE,
    INVALID_MEMORY_ACCESS, MODULE, NOT_FOUND, OK,
};
use crate::emulator::api::LogLevel;
use crate::emulator::state::{Chunk, Cur, HostCtx, Step, Stream};
use crate::emulator::{faults, guest_mem};
use wasmtime::Linker;

/// Registers this family's host functions.
pub(super) fn add(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
    for name in ["proxy_get_buffer", "proxy_get_buffer_bytes"] {
        linker.func_wrap(
            MODULE,
            name,
            move |mut c: C<'_>, kind: i32, offset: i32, max: i32, rbuf: i32, rlen: i32| {
                count(&mut c, name);
                get_buffer(&mut c, kind, offset, max, rbuf, rlen)
            },
        )?;
    }
    for name in ["proxy_set_buffer", "proxy_set_buffer_bytes"] {
        linker.func_wrap(
            MODULE,
            name,
            move |mut c: C<'_>, kind: i32, offset: i32, max: i32, data: i32, len: i32| {
                count(&mut c, name);
                set_buffer(&mut c, kind, offset, max, data, len)
            },
        )?;
    }

    linker.func_wrap(
        MODULE,
        "proxy_get_configuration",
        |mut c: C<'_>, rbuf: i32, rlen: i32| {
            count(&mut c, "proxy_get_configuration");
            check_u32(&mut c, rbuf)?;
            check_u32(&mut c, rlen)?;
            let config = current_config(c.data());
            if config.is_empty() {
                return Ok(OK);
            }
            Ok(return_bytes(&mut c, &config, rbuf, rlen))
        },
    )?;
    Ok(())
}

/// The configuration of the filter whose context is running.
fn current_config(ctx: &HostCtx) -> Vec<u8> {
    let root = match ctx.cur {
        Cur::Root { root } => Some(root),
        Cur::Http { stream, exec } => ctx
            .streams
            .get(&stream)
            .and_then(|s| s.pw.execs.get(exec))
            .map(|e| e.root),
        Cur::None => None,
    };
    root.and_then(|r| ctx.roots.get(r))
        .map(|r| r.config.clone())
        .unwrap_or_default()
}

fn get_buffer(
    c: &mut C<'_>,
    kind: i32,
    offset: i32,
    max: i32,
    rbuf: i32,
    rlen: i32,
) -> anyhow::Result<i32> {
    check_u32(c, rbuf)?;
    check_u32(c, rlen)?;
    let step = c.data().cur_step();
    let data: Vec<u8> = match kind {
        7 => current_config(c.data()),
        6 => Vec::new(),
        0 => {
            if !matches!(step, Step::ReqHeaders | Step::ReqBody | Step::Log) {
                return Err(bad_usage(
                    c,
                    "can only get request body during \"on_request_body\", \"on_log\"",
                ));
            }
            let Some(stream) = c.data().cur_stream() else {
                return Ok(BAD_ARGUMENT);
            };
            let readable = stream.req_body_received || stream.req.body_replaced;
            if !readable || stream.req.body.is_empty() && !stream.req.spooled {
                return Ok(NOT_FOUND);
            }
            if stream.req.spooled && !stream.req.body_replaced {
                let id = stream.id;
                c.data_mut().host_log(
                    LogLevel::Error,
                    format!(
                        "cannot read request body buffered to file at \"/usr/local/kong/client_body_temp/{id:010}\""
                    ),
                );
                return Ok(NOT_FOUND);
            }
            stream.req.body.clone()
        }
        1 => {
            if step != Step::RespBody {
                return Err(bad_usage(
                    c,
                    "can only get response body during \"on_response_body\"",
                ));
            }
            match c.data().cur_stream().and_then(|s| s.resp_chunk.as_ref()) {
                Some(chunk) => chunk.data.clone(),
                None => return Ok(NOT_FOUND),
            }
        }
        4 => {
            if !matches!(step, Step::DispatchResponse | Step::Log) {
                return Err(bad_usage(
                    c,
                    "can only get dispatch response body during \"on_http_dispatch_response\"",
                ));
            }
            let body = current_call_body(c.data());
            match body {
                None => return Ok(BAD_ARGUMENT),
                Some(b) if b.is_empty() => return Ok(NOT_FOUND),
                Some(b) => b,
            }
        }
        8 => return Ok(BAD_ARGUMENT),
        other => {
            c.data_mut().host_log(
                LogLevel::Warn,
                format!("NYI - get_buffer bad buf_type: {other}"),
            );
            return Ok(BAD_ARGUMENT);
        }
    };
    // The host copies from the start of the buffer: `offset` only guards
    // against overflow.
    let offset = guest_mem::usize_of(offset);
    let len = data.len().min(guest_mem::usize_of(max));
    if offset.checked_add(len).is_none() || u32::try_from(offset + len).is_err() {
        return Ok(INTERNAL_FAILURE);
    }
    if len == 0 {
        return Ok(OK);
    }
    let slice = data.get(..len).unwrap_or_default();
    let Some(p) = guest_mem::alloc_copy(c, slice) else {
        return Ok(INTERNAL_FAILURE);
    };
    let l = u32::try_from(len).unwrap_or(u32::MAX);
    if !(guest_mem::write_u32(c, rbuf, p) && guest_mem::write_u32(c, rlen, l)) {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}

fn current_call_body(ctx: &HostCtx) -> Option<Vec<u8>> {
    ctx.current_call()
        // A partial body (read timed out) has a length but no buffer: the
        // host's buffer helper returns NULL and the hostcall BadArgument.
        .filter(|r| r.partial_body.is_none())
        .map(|r| r.body.clone())
}

/// `existing[..at] + value[..max]` (the host's chain append, no padding).
fn splice(existing: &[u8], at: usize, value: &[u8], max: usize) -> Vec<u8> {
    let keep = existing.get(..at.min(existing.len())).unwrap_or_default();
    let add = value.get(..value.len().min(max)).unwrap_or_default();
    let mut out = Vec::with_capacity(keep.len() + add.len());
    out.extend_from_slice(keep);
    out.extend_from_slice(add);
    out
}

fn set_buffer(
    c: &mut C<'_>,
    kind: i32,
    offset: i32,
    max: i32,
    data: i32,
    len: i32,
) -> anyhow::Result<i32> {
    let value = read(c, data, len)?;
    let offset = guest_mem::usize_of(offset);
    let mut max = guest_mem::usize_of(max);
    if offset > 0 && max == 0 && !value.is_empty() {
        max = value.len();
    }
    let prepend = offset == 0 && max == 0 && !value.is_empty();
    let step = c.data().cur_step();
    match kind {
        0 => {
            if !matches!(step, Step::ReqHeaders | Step::ReqBody) {
                return Err(bad_usage(
                    c,
                    "can only set request body during \"on_request_body\"",
                ));
            }
            if c.data()
                .cur_stream()
                .is_none_or(|s| s.entered_header_filter)
            {
                return Ok(INTERNAL_FAILURE);
            }
            faults::take_connection_link(c.data_mut(), "set_http_request_body").map_err(crashed)?;
            let Some(stream) = c.data_mut().cur_stream_mut() else {
                return Ok(INTERNAL_FAILURE);
            };
            let current = if stream.req.spooled && !stream.req.body_replaced {
                Vec::new()
            } else {
                std::mem::take(&mut stream.req.body)
            };
            stream.req.body = if prepend {
                faults::chain_prepend(&mut stream.req.body_bufs, value.len());
                let mut b = value.clone();
                b.extend_from_slice(&current);
                b
            } else {
                let b = splice(&current, offset, &value, max);
                let added = b.len() - offset.min(current.len());
                let freed = faults::chain_append(&mut stream.req.body_bufs, offset, added);
                faults::freed_host_buffers(stream, "set_http_request_body", &freed);
                b
            };
            stream.req.body_replaced = true;
            stream.req.spooled = false;
            Ok(OK)
        }
        1 => {
            if step != Step::RespBody {
                return Err(bad_usage(
                    c,
                    "can only set response body during \"on_response_body\"",
                ));
            }
            let mut warn = false;
            if prepend
                && c.data()
                    .cur_stream()
                    .is_some_and(|s| s.resp_chunk.is_none())
            {
                return Ok(INTERNAL_FAILURE);
            }
            faults::take_connection_link(c.data_mut(), "set_http_response_body")
                .map_err(crashed)?;
            {
                let Some(stream) = c.data_mut().cur_stream_mut() else {
                    return Ok(INTERNAL_FAILURE);
                };
                if prepend {
                    let Some(chunk) = stream.resp_chunk.as_mut() else {
                        return Ok(INTERNAL_FAILURE);
                    };
                    faults::chain_prepend(&mut chunk.bufs, value.len());
                    let mut b = value.clone();
                    b.extend_from_slice(&chunk.data);
                    chunk.data = b;
                } else {
                    let chunk = stream.resp_chunk.get_or_insert_with(Chunk::default);
                    let data = splice(&chunk.data, offset, &value, max);
                    let added = data.len() - offset.min(chunk.data.len());
                    let freed = faults::chain_append(&mut chunk.bufs, offset, added);
                    chunk.data = data;
                    let empty = chunk.data.is_empty() && !chunk.last;
                    faults::freed_host_buffers(stream, "set_http_response_body", &freed);
                    if empty {
                        stream.resp_chunk = None;
                    }
                }
                if stream.resp.header_sent && has_length(stream) {
                    warn = true;
                }
                if let Some(chunk) = &stream.resp_chunk {
                    if chunk.last {
                        stream.resp_chunk_eof = true;
                    }
                }
            }
            if warn {
                c.data_mut().host_log(
                    LogLevel::Warn,
                    "overriding response body chunk while Content-Length header already sent",
                );
            }
            Ok(OK)
        }
        other => {
            c.data_mut().host_log(
                LogLevel::Warn,
                format!("NYI - set_buffer bad buf_type: {other}"),
            );
            Ok(BAD_ARGUMENT)
        }
    }
}

/// The response to the client announces a length (not chunked).
fn has_length(stream: &Stream) -> bool {
    stream.resp.headers.contains(b"Content-Length") || stream.resp.content_length_n >= 0
}
