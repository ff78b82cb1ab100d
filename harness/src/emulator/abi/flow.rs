//! Flow control: resuming a paused request (`proxy_continue_stream`,
//! `proxy_continue_request`) and local responses (`proxy_send_http_response`).

use super::common::{bad_usage, count, read, BAD_ARGUMENT, C, INTERNAL_FAILURE, MODULE, OK};
use crate::emulator::api::LogLevel;
use crate::emulator::headers::unmarshal;
use crate::emulator::state::{Action, Chunk, Cur, EnvState, HostCtx, LocalResponse, Step};
use std::sync::atomic::Ordering;
use wasmtime::Linker;

/// Registers this family's host functions.
pub(super) fn add(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
    linker.func_wrap(
        MODULE,
        "proxy_continue_stream",
        |mut c: C<'_>, kind: i32| {
            count(&mut c, "proxy_continue_stream");
            match kind {
                0 | 1 => Ok(resume_http_request(&mut c)),
                other => {
                    c.data_mut().host_log(
                        LogLevel::Warn,
                        format!("NYI - continue stream type: {other}"),
                    );
                    Ok(INTERNAL_FAILURE)
                }
            }
        },
    )?;
    linker.func_wrap(MODULE, "proxy_continue_request", |mut c: C<'_>| {
        count(&mut c, "proxy_continue_request");
        resume_http_request(&mut c)
    })?;

    for name in ["proxy_send_http_response", "proxy_send_local_response"] {
        linker.func_wrap(
            MODULE,
            name,
            move |mut c: C<'_>,
                  status: i32,
                  rptr: i32,
                  rlen: i32,
                  bptr: i32,
                  blen: i32,
                  hptr: i32,
                  hlen: i32,
                  _grpc: i32| {
                count(&mut c, name);
                send_local_response(&mut c, status, rptr, rlen, bptr, blen, hptr, hlen)
            },
        )?;
    }
    Ok(())
}

fn resume_http_request(c: &mut C<'_>) -> i32 {
    match c.data_mut().cur_stream_mut() {
        Some(stream) => {
            stream.state = EnvState::Continue;
            OK
        }
        None => INTERNAL_FAILURE,
    }
}

#[allow(clippy::too_many_arguments)]
fn send_local_response(
    c: &mut C<'_>,
    status: i32,
    rptr: i32,
    rlen: i32,
    bptr: i32,
    blen: i32,
    hptr: i32,
    hlen: i32,
) -> anyhow::Result<i32> {
    let reason = read(c, rptr, rlen)?;
    let body = read(c, bptr, blen)?;
    let map = read(c, hptr, hlen)?;
    let Some(headers) = unmarshal(&map) else {
        return Ok(INTERNAL_FAILURE);
    };
    let Cur::Http { stream: sid, exec } = c.data().cur else {
        return Ok(INTERNAL_FAILURE);
    };
    let step = c.data().cur_step();
    let (entered_header, entered_body, stashed) = match c.data().streams.get(&sid) {
        Some(s) => (
            s.entered_header_filter,
            s.entered_body_filter,
            s.local.is_some(),
        ),
        None => return Ok(INTERNAL_FAILURE),
    };

    if entered_header && !entered_body {
        // From on_http_response_headers: status and body only.
        if let Some(s) = c.data_mut().streams.get_mut(&sid) {
            let mut data = body.clone();
            if !data.is_empty() {
                data.push(b'\n');
            }
            let last = data.is_empty();
            // ngx_http_wasm_set_resp_body into a chunk of the module's own.
            s.resp_chunk = Some(Chunk::module(data, last));
            s.resp.status = u16::try_from(status).unwrap_or(500);
            s.resp.reason = (!reason.is_empty()).then_some(reason);
            s.resp_chunk_override = true;
            s.local_sent = true;
        }
        return Ok(OK);
    }
    if entered_header {
        return Err(bad_usage(c, "response already sent"));
    }
    if stashed {
        return Err(bad_usage(c, "local response already stashed"));
    }
    if !(100..=999).contains(&status) {
        return Ok(BAD_ARGUMENT);
    }
    let mut cancelled: Vec<u32> = Vec::new();
    if let Some(s) = c.data_mut().streams.get_mut(&sid) {
        let body = if body.is_empty() {
            None
        } else {
            let mut b = body;
            b.push(b'\n');
            Some(b)
        };
        s.local = Some(LocalResponse {
            status: u16::try_from(status).unwrap_or(500),
            reason: (!reason.is_empty()).then_some(reason),
            headers,
            body,
        });
        s.resp_content_chosen = true;
        if step != Step::DispatchResponse {
            s.pw.action = Action::Done;
        }
        if let Some(e) = s.pw.execs.get_mut(exec) {
            cancelled = std::mem::take(&mut e.dispatch_ops);
        }
    }
    if !cancelled.is_empty() {
        c.data_mut().host_log(
            LogLevel::Info,
            "local response produced, cancelling pending dispatch operations",
        );
        for token in cancelled {
            if let Some(call) = c.data_mut().calls.remove(&token) {
                call.cancel.store(true, Ordering::SeqCst);
            }
        }
    }
    Ok(OK)
}
