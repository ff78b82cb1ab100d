//! Host faults: defects of the real host that crash the nginx worker, and
//! what the emulator does when a filter triggers one.
//!
//! **Body replacement.** `set_http_response_body` and `set_http_request_body`
//! go through `ngx_wasm_chain_append` (src/wasm/ngx_wasm_util.c) with the
//! *connection's* pool. `ngx_wasm_chain_clear` first shortens the buffer
//! holding the start offset and empties every buffer after it (from offset
//! 0: every buffer). `ngx_wasm_chain_append` then walks the chain: an empty
//! buffer of the module's own tag is recycled, but an empty buffer someone
//! else made (the local response's buffer from
//! `ngx_http_wasm_stash_local_response`, upstream buffers, nginx's last
//! buffer, the request body) goes to `ngx_free_chain` on the connection
//! pool, although its chain link was allocated in the request pool. The
//! request pool is freed when the request ends; on a kept-alive connection
//! the dangling link stays on the connection pool's free list, and the next
//! request on that connection takes it back in its first
//! `ngx_alloc_chain_link` on that pool (`ngx_wasm_chain_get_free_buf`:
//! the buffers of `dispatch_http_call`, or of a body replacement) and
//! corrupts memory: the worker dies (SIGSEGV), with every request it had in
//! flight. A connection that closes after the response (`Connection:
//! close`, HTTP/1.0 without keep-alive, a filter setting `Connection: close`
//! on the response) destroys its pool, and nothing is reused. On HTTP/2 the
//! request's connection is a copy of the client connection, with the same
//! pool, which lives on across streams.
//!
//! The emulator is stricter than the host on one point: on the host the
//! link a call frees is sometimes taken back by the same call (when the
//! request's own free list is empty, `ngx_alloc_chain_link` pops it right
//! away), so a connection survives by luck; the emulator always counts it.
//!
//! **Removing the `Connection` response header** (`builtins.rs`) **or a
//! settable pseudo-header** (`maps.rs`): the handler reads the removal's
//! NULL value.
//!
//! When a fault fires inside a host function, the guest call is aborted,
//! the worker is "dead" until the emulator's public call returns (no more
//! guest calls, logs or I/O), then [`reap`] ends every in-flight request
//! with [`ClientResponse::host_fault`] and the next request gets a fresh
//! instance, configured lazily as after a trap.
//!
//! The data this works on (the worker's fault state and the buffers of body
//! chains) is kept in `state.rs`; this module holds what the host does.

use super::api::{ClientResponse, HttpVersion, LogLevel};
use super::state::{Buf, BufTag, CallOwner, Crash, HostCtx, Stage, Stream};
use std::sync::atomic::Ordering;

/// The local response's body (`ngx_http_wasm_stash_local_response`).
pub(crate) const LOCAL_BODY: &str = "the local response's body buffer";
/// The empty last buffer nginx sends with `ngx_http_send_special`.
pub(crate) const LAST_BUF: &str = "nginx's empty last buffer";
/// A piece of a proxied response.
pub(crate) const UPSTREAM_BUF: &str = "an upstream response buffer";
/// nginx's own error page.
pub(crate) const ERROR_PAGE: &str = "nginx's error page buffer";
/// The request body nginx read.
pub(crate) const REQUEST_BODY: &str = "the request body buffer";

/// `ngx_wasm_chain_append(pool, chain, at, value)` on the buffers of a
/// chain holding `total` bytes: the chain keeps `..at`, gets one new module
/// buffer of `len` bytes, and every buffer left empty is dropped. Returns
/// the host buffers handed to `ngx_free_chain` on the connection pool.
pub(crate) fn chain_append(bufs: &mut Vec<Buf>, at: usize, len: usize) -> Vec<&'static str> {
    // ngx_wasm_chain_clear
    let mut pos = 0;
    for b in bufs.iter_mut() {
        if at > 0 && pos + b.len > at {
            b.len = at - pos;
            pos = at;
        } else if pos == at {
            b.len = 0;
        } else {
            pos += b.len;
        }
    }
    // The walk for the tail: empty buffers leave the chain.
    let mut freed = Vec::new();
    bufs.retain(|b| match (b.len, b.tag) {
        (0, BufTag::Host(what)) => {
            freed.push(what);
            false
        }
        (0, BufTag::Module) => false,
        _ => true,
    });
    bufs.push(Buf {
        len,
        tag: BufTag::Module,
    });
    freed
}

/// `ngx_wasm_chain_prepend`: a module buffer in front, nothing freed.
pub(crate) fn chain_prepend(bufs: &mut Vec<Buf>, len: usize) {
    bufs.insert(
        0,
        Buf {
            len,
            tag: BufTag::Module,
        },
    );
}

/// Marker returned when a host function crashed the worker: the guest call
/// must be aborted.
#[derive(Debug)]
pub(crate) struct Crashed;

/// A body replacement emptied host buffers of this request's chain.
pub(crate) fn freed_host_buffers(stream: &mut Stream, call: &str, freed: &[&'static str]) {
    if let Some(what) = freed.first() {
        stream
            .freed_host_link
            .get_or_insert_with(|| format!("{call} emptying {what}"));
    }
}

/// Whether nginx keeps the client connection (and its pool) for another
/// request after this response.
fn connection_reused(s: &Stream) -> bool {
    match s.req.version {
        HttpVersion::Http2 => true,
        HttpVersion::Http10 | HttpVersion::Http11 => s.req.keepalive && s.response_keepalive(),
    }
}

/// The request pool is freed: a link it left on a kept-alive connection's
/// pool now dangles.
pub(crate) fn request_freed(ctx: &mut HostCtx, sid: u64) {
    let Some(s) = ctx.streams.get(&sid) else {
        return;
    };
    let (Some(conn), Some(what)) = (s.connection, s.freed_host_link.clone()) else {
        return;
    };
    if connection_reused(s) {
        ctx.faults.dangling.entry(conn).or_insert(what);
    }
}

/// A host call of the running request is about to take a chain link from
/// its connection's pool (`ngx_alloc_chain_link` through
/// `ngx_wasm_chain_get_free_buf`).
pub(crate) fn take_connection_link(ctx: &mut HostCtx, call: &str) -> Result<(), Crashed> {
    let Some(conn) = ctx.cur_stream().and_then(|s| s.connection) else {
        return Ok(());
    };
    let Some(what) = ctx.faults.dangling.get(&conn).cloned() else {
        return Ok(());
    };
    Err(crash(
        ctx,
        &format!(
            "{call} reused a chain link freed with an earlier request's pool on this client \
             connection (#{conn}), left there by {what}"
        ),
    ))
}

/// A request finishes with dispatches still pending (its filter returned
/// `Continue` after `dispatch_http_call`, so nothing waited for them; a
/// local response would have cancelled them). Seen on a real build: the
/// host does not cancel them, and reading the reply later crashes the
/// worker (SIGSEGV in `ngx_wasm_read_http_response`, from
/// `ngx_http_proxy_wasm_dispatch_resume_handler`, the request's memory
/// freed). The calls are kept pending; [`orphaned_call_read`] crashes.
pub(crate) fn orphan_calls(ctx: &mut HostCtx, sid: u64) {
    for call in ctx.calls.values_mut() {
        if call.result.is_none()
            && matches!(call.owner, CallOwner::Http { stream, .. } if stream == sid)
        {
            call.orphaned = true;
        }
    }
}

/// The reply of an orphaned call is read: the worker crashes.
pub(crate) fn orphaned_call_read(ctx: &mut HostCtx, token: u32) {
    ctx.calls.remove(&token);
    let _ = crash(
        ctx,
        &format!(
            "the reply of dispatch {token} was read after its request had finished \
             (ngx_wasm_read_http_response into the freed request)"
        ),
    );
}

/// The worker dies: logs it, counts it, and marks every request in flight
/// as lost. Until [`reap`], no guest call, log line or I/O happens.
pub(crate) fn crash(ctx: &mut HostCtx, why: &str) -> Crashed {
    if ctx.faults.crashed() {
        return Crashed;
    }
    if ctx.faults.worker_pid == 0 {
        ctx.faults.worker_pid = std::process::id();
    }
    let message = format!(
        "worker process {} exited on signal 11 (emulated host fault: {why})",
        ctx.faults.worker_pid
    );
    // Impossible to miss, whatever the test looks at.
    eprintln!("[crit] [emu] {message}");
    ctx.log(LogLevel::Critical, 0, false, message.clone());
    ctx.stats.host_faults += 1;
    let lost = ctx
        .streams
        .iter()
        .filter(|(_, s)| s.stage != Stage::Complete)
        .map(|(id, _)| *id)
        .collect();
    ctx.faults.crash = Some(Crash { message, lost });
    Crashed
}

/// After a crash, once the emulator's call is back at its public API: the
/// requests in flight end lost, pending I/O is cancelled, the worker's
/// client connections are gone, and the next request starts a new
/// instance.
pub(crate) fn reap(ctx: &mut HostCtx) {
    let Some(crash) = ctx.faults.crash.take() else {
        return;
    };
    for sid in crash.lost {
        if let Some(s) = ctx.streams.get_mut(&sid) {
            if let Some(c) = s.upstream_cancel.take() {
                c.store(true, Ordering::SeqCst);
            }
            s.stage = Stage::Complete;
            s.outcome = Some(ClientResponse {
                status: 0,
                upstream_requests: s.upstream_requests,
                host_fault: Some(crash.message.clone()),
                ..ClientResponse::default()
            });
        }
    }
    for (_, call) in ctx.calls.drain() {
        call.cancel.store(true, Ordering::SeqCst);
    }
    for r in ctx.roots.iter_mut() {
        r.dispatch_ops.clear();
        r.dispatch_call = None;
    }
    ctx.faults.dangling.clear();
    ctx.faults.worker_pid = ctx.faults.worker_pid.wrapping_add(1);
    ctx.trapped = true;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(len: usize) -> Buf {
        Buf {
            len,
            tag: BufTag::Host(LOCAL_BODY),
        }
    }

    #[test]
    fn replacing_from_zero_frees_the_host_buffer() {
        let mut bufs = vec![host(4)];
        assert_eq!(chain_append(&mut bufs, 0, 3), vec![LOCAL_BODY]);
        assert_eq!(
            bufs,
            vec![Buf {
                len: 3,
                tag: BufTag::Module
            }]
        );
    }

    #[test]
    fn trimming_inside_the_buffer_frees_nothing() {
        let mut bufs = vec![host(4)];
        assert!(chain_append(&mut bufs, 3, 0).is_empty());
        assert_eq!(bufs.first(), Some(&host(3)));
        // Buffers after the offset are consumed, and freed.
        let mut bufs = vec![host(4), host(4)];
        assert_eq!(chain_append(&mut bufs, 2, 0), vec![LOCAL_BODY]);
        // Past the end: nothing is consumed.
        let mut bufs = vec![host(4)];
        assert!(chain_append(&mut bufs, 10, 1).is_empty());
    }

    #[test]
    fn an_empty_host_buffer_is_freed_even_by_an_append_at_the_end() {
        let mut bufs = vec![
            Buf {
                len: 5,
                tag: BufTag::Module,
            },
            Buf {
                len: 0,
                tag: BufTag::Host(LAST_BUF),
            },
        ];
        assert_eq!(chain_append(&mut bufs, 5, 2), vec![LAST_BUF]);
    }
}
