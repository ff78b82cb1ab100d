//! HTTP dispatches (`proxy_dispatch_http_call`): the host's checks, the
//! request it writes, and the I/O thread started for it.

use super::common::{
    bad_usage, check_u32, count, crashed, read, trap, C, INTERNAL_FAILURE, INVALID_MEMORY_ACCESS,
    MODULE, OK,
};
use crate::emulator::api::LogLevel;
use crate::emulator::headers::{escape_name, escape_value, unmarshal};
use crate::emulator::net::{self, DispatchRequest};
use crate::emulator::state::{Action, Call, CallOwner, Cur, HostCtx, Step};
use crate::emulator::{faults, guest_mem, script};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use wasmtime::Linker;

/// Registers this family's host functions.
pub(super) fn add(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
    for name in ["proxy_dispatch_http_call", "proxy_http_call"] {
        linker.func_wrap(
            MODULE,
            name,
            move |mut c: C<'_>,
                  hptr: i32,
                  hlen: i32,
                  mptr: i32,
                  mlen: i32,
                  bptr: i32,
                  blen: i32,
                  tptr: i32,
                  tlen: i32,
                  timeout: i32,
                  rtoken: i32| {
                count(&mut c, name);
                dispatch_http_call(
                    &mut c,
                    [hptr, hlen, mptr, mlen, bptr, blen, tptr, tlen],
                    timeout,
                    rtoken,
                )
            },
        )?;
    }
    Ok(())
}

/// Splits `host[:port]` / `[v6][:port]` like the host's socket init.
fn parse_upstream(target: &str, tls: bool) -> Result<(String, u16), &'static str> {
    if target.is_empty() {
        return Err("no host");
    }
    if target.starts_with("unix:") {
        return Err("unix domain sockets are not emulated");
    }
    let default = if tls { 443 } else { 80 };
    if let Some(rest) = target.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or("invalid host")?;
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("invalid host");
        }
        let port = match after.strip_prefix(':') {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("invalid port")?,
            None if after.is_empty() => default,
            None => return Err("invalid host"),
        };
        return Ok((ip.to_string(), port));
    }
    match target.rsplit_once(':') {
        Some((host, port)) => {
            if host.is_empty() {
                return Err("no host");
            }
            if host.contains(':') {
                return Err("invalid host");
            }
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or("invalid port")?;
            Ok((host.to_string(), port))
        }
        None => Ok((target.to_string(), default)),
    }
}

fn dispatch_http_call(
    c: &mut C<'_>,
    args: [i32; 8],
    timeout: i32,
    rtoken: i32,
) -> anyhow::Result<i32> {
    let step = c.data().cur_step();
    if !matches!(
        step,
        Step::ReqHeaders | Step::ReqBody | Step::Tick | Step::DispatchResponse
    ) {
        return Err(bad_usage(
            c,
            "can only send HTTP dispatch during \"on_request_headers\", \"on_request_body\", \
             \"on_tick\", \"on_dispatch_response\", \"on_foreign_function\"",
        ));
    }
    let [hptr, hlen, mptr, mlen, bptr, blen, tptr, tlen] = args;
    let target = read(c, hptr, hlen)?;
    let map = read(c, mptr, mlen)?;
    let body = read(c, bptr, blen)?;
    let trailers = read(c, tptr, tlen)?;
    check_u32(c, rtoken)?;

    let owner = match c.data().cur {
        Cur::Http { stream, exec } => CallOwner::Http { stream, exec },
        Cur::Root { root } => CallOwner::Root { root },
        Cur::None => return Ok(INTERNAL_FAILURE),
    };
    // The token is taken before the request is checked, as the host does.
    let token = {
        let ctx = c.data_mut();
        let t = ctx.next_token;
        ctx.next_token = ctx.next_token.wrapping_add(1);
        t
    };
    let (Some(headers), Some(_)) = (unmarshal(&map), unmarshal(&trailers)) else {
        return Err(dispatch_failed(c, "marshalling error"));
    };

    let mut method = None;
    let mut path = None;
    let mut authority = None;
    let mut tls = false;
    let mut user_headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut logs: Vec<(LogLevel, String)> = Vec::new();
    for (k, v) in headers {
        if k.first() == Some(&b':') {
            match k.as_slice() {
                b":method" => method = Some(v),
                b":path" => path = Some(v),
                b":authority" => authority = Some(v),
                b":scheme" => match v.as_slice() {
                    b"https" => tls = true,
                    b"http" => {}
                    _ => logs.push((
                        LogLevel::Warn,
                        format!("unknown scheme \"{}\"", String::from_utf8_lossy(&k)),
                    )),
                },
                _ => logs.push((
                    LogLevel::Warn,
                    format!(
                        "NYI - dispatch_http_call header \"{}\"",
                        String::from_utf8_lossy(&k)
                    ),
                )),
            }
            continue;
        }
        if k.eq_ignore_ascii_case(b"host") || k.eq_ignore_ascii_case(b"connection") {
            logs.push((
                LogLevel::Debug,
                format!(
                    "proxy_wasm http dispatch cannot override the \"{}\" header, skipping",
                    String::from_utf8_lossy(&k)
                ),
            ));
            continue;
        }
        user_headers.push((escape_name(&k), escape_value(&v)));
    }
    for (level, msg) in logs {
        c.data_mut().host_log(level, msg);
    }
    let method = method.filter(|m| !m.is_empty());
    let Some(method) = method else {
        return Err(dispatch_failed(c, "no :method"));
    };
    let Some(path) = path.filter(|p| !p.is_empty()) else {
        return Err(dispatch_failed(c, "no :path"));
    };
    let target_text = String::from_utf8_lossy(&target).into_owned();
    let (host, port) = match parse_upstream(&target_text, tls) {
        Ok(hp) => hp,
        Err(e) => return Err(dispatch_failed(c, &format!("tcp socket - {e}"))),
    };
    // The call's buffers come from the client connection's pool.
    faults::take_connection_link(c.data_mut(), "dispatch_http_call").map_err(crashed)?;
    let authority = authority
        .filter(|a| !a.is_empty())
        .unwrap_or_else(|| target.clone());
    let sni_source = String::from_utf8_lossy(&authority).into_owned();
    let sni = if sni_source.starts_with('[') {
        String::new()
    } else {
        sni_source.split(':').next().unwrap_or("").to_string()
    };

    // The request exactly as the host writes it.
    let mut head = Vec::new();
    head.extend_from_slice(&method);
    head.push(b' ');
    head.extend_from_slice(&path);
    head.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    head.extend_from_slice(&authority);
    head.extend_from_slice(b"\r\nConnection: close\r\n");
    if !user_headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(b"content-length"))
    {
        head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    for (k, v) in &user_headers {
        head.extend_from_slice(k);
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");

    let timeout = match u32::from_ne_bytes(timeout.to_ne_bytes()) {
        0 => c.data().opts.socket_timeout,
        ms => Duration::from_millis(u64::from(ms)),
    };
    let request = DispatchRequest {
        host,
        port,
        tls,
        sni,
        head,
        body,
        timeout,
    };
    let cancel = Arc::new(AtomicBool::new(false));
    {
        let ctx = c.data_mut();
        ctx.stats.dispatches += 1;
        let io_started = Instant::now();
        let spawned = match ctx.network.clone() {
            // A scripted network answers now; the answer is delivered like a
            // socket's, after this callback returns.
            Some(network) => {
                let outgoing = script::Outgoing {
                    target: format!("{}:{}", request.host, request.port),
                    head: &request.head,
                    body: &request.body,
                };
                let result = script::call_result(network.call(&outgoing));
                let _ = ctx.tx.send(net::Completion::Dispatch { token, result });
                Ok(None)
            }
            None => net::spawn_dispatch(
                ctx.tx.clone(),
                token,
                request,
                ctx.tls.clone(),
                cancel.clone(),
            )
            .map(Some),
        };
        ctx.stats.io_start_time += io_started.elapsed();
        match spawned {
            Ok(Some(handle)) => ctx.threads.push(handle),
            Ok(None) => {}
            Err(e) => {
                let msg = format!("dispatch failed: could not start I/O thread: {e}");
                return Err(trap(c, msg));
            }
        }
        ctx.calls.insert(
            token,
            Call {
                owner,
                cancel,
                result: None,
                orphaned: false,
            },
        );
        match owner {
            CallOwner::Http { stream, exec } => {
                if let Some(s) = ctx.streams.get_mut(&stream) {
                    if let Some(e) = s.pw.execs.get_mut(exec) {
                        e.dispatch_ops.insert(0, token);
                    }
                    s.pw.action = Action::Pause;
                }
            }
            CallOwner::Root { root } => {
                if let Some(r) = ctx.roots.get_mut(root) {
                    r.dispatch_ops.insert(0, token);
                }
            }
        }
    }
    if !guest_mem::write_u32(c, rtoken, token) {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}

/// A dispatch that fails while the guest is in the host function traps with
/// the host's "dispatch failed" message.
fn dispatch_failed(c: &mut C<'_>, reason: &str) -> anyhow::Error {
    trap(c, format!("dispatch failed: {reason}"))
}
