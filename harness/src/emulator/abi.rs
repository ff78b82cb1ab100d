//! The proxy-wasm host functions (`env.proxy_*`), with ngx_wasm_module's
//! signatures, step checks, return statuses and traps.
//!
//! Host functions the module lists but does not implement trap with "host
//! trap (function not yet implemented): <name>". Signatures are the host's:
//! a module whose import has another signature (e.g. `proxy_get_log_level`
//! with one parameter, as the Rust SDK declares it) fails to instantiate,
//! as it fails to load in Kong.

use super::builtins;
use super::faults::{self, Crashed};
use super::headers::{escape_name, escape_value, marshal, unmarshal};
use super::maps::{self, MapOp, MapType};
use super::net::{self, DispatchRequest};
use super::properties::{self, Prop};
use super::state::{
    Action, Call, CallOwner, Chunk, Cur, HostCtx, LocalResponse, Metric, SharedValue, Step,
};
use super::vm::mem;
use super::LogLevel;
use anyhow::anyhow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, FuncType, Linker, ValType};

const MODULE: &str = "env";

// proxy-wasm statuses
const OK: i32 = 0;
const NOT_FOUND: i32 = 1;
const BAD_ARGUMENT: i32 = 2;
const INVALID_MEMORY_ACCESS: i32 = 6;
const CAS_MISMATCH: i32 = 8;
const INTERNAL_FAILURE: i32 = 10;

/// Functions the host lists but does not implement, with their parameter
/// types (`i` = i32, `I` = i64) as the host declares them.
const NYI: [(&str, &str); 42] = [
    ("proxy_get_log_level", "ii"),
    ("proxy_context_finalize", ""),
    ("proxy_done", ""),
    ("proxy_create_timer", "iii"),
    ("proxy_delete_timer", "i"),
    ("proxy_get_map_values", "iiiii"),
    ("proxy_set_map_values", "iiiii"),
    ("proxy_resume_stream", "i"),
    ("proxy_resume_downstream", "i"),
    ("proxy_resume_upstream", "i"),
    ("proxy_close_stream", "i"),
    ("proxy_resume_http_stream", "i"),
    ("proxy_continue_response", ""),
    ("proxy_dispatch_grpc_call", "iiiiiiiiiiii"),
    ("proxy_grpc_call", "iiiiiiiiiiii"),
    ("proxy_open_grpc_stream", "iiiiiiiii"),
    ("proxy_grpc_stream", "iiiiiiiii"),
    ("proxy_send_grpc_stream_message", "iii"),
    ("proxy_grpc_send", "iiii"),
    ("proxy_cancel_grpc_call", "i"),
    ("proxy_grpc_cancel", "i"),
    ("proxy_close_grpc_call", "i"),
    ("proxy_grpc_close", "i"),
    ("proxy_get_status", "iii"),
    ("proxy_open_shared_kvstore", "iiii"),
    ("proxy_get_shared_kvstore_key_values", "iiiiii"),
    ("proxy_set_shared_kvstore_key_values", "iiiiii"),
    ("proxy_add_shared_kvstore_key_values", "iiiiii"),
    ("proxy_remove_shared_kvstore_key", "iiiiii"),
    ("proxy_delete_shared_kvstore", "iiiiii"),
    ("proxy_open_shared_queue", "iiii"),
    ("proxy_dequeue_shared_queue_item", "iii"),
    ("proxy_enqueue_shared_queue_item", "iii"),
    ("proxy_delete_shared_queue", "iiii"),
    ("proxy_resolve_shared_queue", "iiiii"),
    ("proxy_create_metric", "iiii"),
    ("proxy_get_metric_value", "ii"),
    ("proxy_set_metric_value", "iI"),
    ("proxy_increment_metric_value", "iI"),
    ("proxy_delete_metric", "i"),
    ("proxy_call_custom_function", "iiiii"),
    ("proxy_clear_route_cache", ""),
];

/// Every `env` import the host provides.
pub(crate) const IMPORTS: [&str; 75] = [
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_effective_context",
    "proxy_context_finalize",
    "proxy_done",
    "proxy_create_timer",
    "proxy_delete_timer",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer",
    "proxy_set_buffer_bytes",
    "proxy_get_map_values",
    "proxy_get_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_set_map_values",
    "proxy_set_header_map_pairs",
    "proxy_add_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_resume_stream",
    "proxy_resume_downstream",
    "proxy_resume_upstream",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_resume_http_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_send_http_response",
    "proxy_send_local_response",
    "proxy_dispatch_http_call",
    "proxy_http_call",
    "proxy_dispatch_grpc_call",
    "proxy_grpc_call",
    "proxy_open_grpc_stream",
    "proxy_grpc_stream",
    "proxy_send_grpc_stream_message",
    "proxy_grpc_send",
    "proxy_cancel_grpc_call",
    "proxy_grpc_cancel",
    "proxy_close_grpc_call",
    "proxy_grpc_close",
    "proxy_get_status",
    "proxy_open_shared_kvstore",
    "proxy_get_shared_kvstore_key_values",
    "proxy_get_shared_data",
    "proxy_set_shared_kvstore_key_values",
    "proxy_set_shared_data",
    "proxy_add_shared_kvstore_key_values",
    "proxy_remove_shared_kvstore_key",
    "proxy_delete_shared_kvstore",
    "proxy_open_shared_queue",
    "proxy_register_shared_queue",
    "proxy_dequeue_shared_queue_item",
    "proxy_dequeue_shared_queue",
    "proxy_enqueue_shared_queue_item",
    "proxy_enqueue_shared_queue",
    "proxy_delete_shared_queue",
    "proxy_resolve_shared_queue",
    "proxy_create_metric",
    "proxy_define_metric",
    "proxy_get_metric_value",
    "proxy_get_metric",
    "proxy_set_metric_value",
    "proxy_record_metric",
    "proxy_increment_metric_value",
    "proxy_increment_metric",
    "proxy_delete_metric",
    "proxy_call_custom_function",
    "proxy_call_foreign_function",
    "proxy_get_configuration",
    "proxy_clear_route_cache",
];

type C<'a> = Caller<'a, HostCtx>;

fn count(caller: &mut C<'_>, name: &'static str) {
    let calls = &mut caller.data_mut().stats.hostcalls;
    match calls.get_mut(name) {
        Some(n) => *n += 1,
        None => {
            calls.insert(name.to_string(), 1);
        }
    }
}

/// Records a trap message and returns the error that makes Wasmtime trap.
fn trap(caller: &mut C<'_>, msg: impl Into<String>) -> anyhow::Error {
    let msg = msg.into();
    caller.data_mut().set_trap(msg.clone());
    anyhow!(msg)
}

fn bad_usage(caller: &mut C<'_>, msg: &str) -> anyhow::Error {
    trap(caller, format!("host trap (bad usage): {msg}"))
}

/// The host function crashed the worker: the guest call is aborted (the
/// worker is gone; see `faults.rs`).
fn crashed(_: Crashed) -> anyhow::Error {
    anyhow!("the worker process crashed (emulated host fault)")
}

/// Reads a guest slice or traps like the host does.
fn read(caller: &mut C<'_>, ptr: i32, len: i32) -> anyhow::Result<Vec<u8>> {
    mem::read(caller, ptr, len).map_err(|msg| trap(caller, msg))
}

fn check_u32(caller: &mut C<'_>, ptr: i32) -> anyhow::Result<()> {
    mem::check_u32_ptr(caller, ptr).map_err(|msg| trap(caller, msg))
}

/// Copies `bytes` into fresh guest memory and stores the pointer and length:
/// `InternalFailure` when the guest's allocator fails, `InvalidMemoryAccess`
/// when the copy does not fit.
fn return_bytes(caller: &mut C<'_>, bytes: &[u8], rbuf: i32, rlen: i32) -> i32 {
    let p = mem::alloc(caller, bytes.len());
    if p == 0 {
        return INTERNAL_FAILURE;
    }
    if !mem::write(caller, p, bytes) {
        return INVALID_MEMORY_ACCESS;
    }
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    if !(mem::write_u32(caller, rbuf, p) && mem::write_u32(caller, rlen, len)) {
        return INVALID_MEMORY_ACCESS;
    }
    OK
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
    for (name, params) in NYI.iter() {
        let name: &'static str = name;
        let params: Vec<ValType> = params
            .chars()
            .map(|c| if c == 'I' { ValType::I64 } else { ValType::I32 })
            .collect();
        let ty = FuncType::new(linker.engine(), params, [ValType::I32]);
        linker.func_new(MODULE, name, ty, move |mut caller, _args, _results| {
            count(&mut caller, name);
            Err(trap(
                &mut caller,
                format!("host trap (function not yet implemented): {name}"),
            ))
        })?;
    }

    linker.func_wrap(
        MODULE,
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| {
            count(&mut c, "proxy_log");
            let msg = read(&mut c, ptr, len)?;
            let level = match level {
                0 => LogLevel::Trace,
                1 => LogLevel::Debug,
                2 => LogLevel::Info,
                3 => LogLevel::Warn,
                4 => LogLevel::Error,
                5 => LogLevel::Critical,
                other => {
                    c.data_mut().host_log(
                        LogLevel::Warn,
                        format!("NYI - proxy_log bad log_level: {other}"),
                    );
                    return Ok(BAD_ARGUMENT);
                }
            };
            let ctx = c.data_mut();
            let id = ctx.cur_context_id();
            ctx.log(level, id, true, String::from_utf8_lossy(&msg).into_owned());
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, out: i32| {
            count(&mut c, "proxy_get_current_time_nanoseconds");
            mem::check_slice(&c, out, 8).map_err(|m| trap(&mut c, m))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            if !mem::write_u64(&mut c, out, now) {
                return Err(trap(&mut c, mem::BAD_SLICE_PTR));
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_set_effective_context",
        |mut c: C<'_>, _id: i32| {
            count(&mut c, "proxy_set_effective_context");
            OK
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| {
            count(&mut c, "proxy_set_tick_period_milliseconds");
            set_tick_period(&mut c, period)
        },
    )?;

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
        "proxy_get_header_map_pairs",
        |mut c: C<'_>, map: i32, rbuf: i32, rlen: i32| {
            count(&mut c, "proxy_get_header_map_pairs");
            check_u32(&mut c, rbuf)?;
            check_u32(&mut c, rlen)?;
            let Some(mut pairs) = maps::get_all(c.data(), MapType::from_guest(map)) else {
                if let MapType::Other(t) = MapType::from_guest(map) {
                    c.data_mut()
                        .host_log(LogLevel::Warn, format!("NYI - get_map bad map_type: {t}"));
                }
                return Ok(BAD_ARGUMENT);
            };
            let mut cut_to = None;
            if pairs.len() > 100 {
                cut_to = Some(truncated_map_size(&pairs, 100));
                pairs.truncate(100);
                c.data_mut()
                    .host_log(LogLevel::Warn, "marshalled map truncated to 100 elements");
            }
            let mut bytes = marshal(&pairs);
            if let Some(size) = cut_to {
                // Seen on a real build: the filter gets the map cut to the
                // size the host computed (the bytes past it are written
                // beyond the buffer, which is not emulated).
                bytes.truncate(size);
            }
            Ok(match return_bytes(&mut c, &bytes, rbuf, rlen) {
                OK => OK,
                _ => INVALID_MEMORY_ACCESS,
            })
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_get_header_map_value",
        |mut c: C<'_>, map: i32, kptr: i32, klen: i32, rbuf: i32, rlen: i32| {
            count(&mut c, "proxy_get_header_map_value");
            let key = read(&mut c, kptr, klen)?;
            check_u32(&mut c, rbuf)?;
            check_u32(&mut c, rlen)?;
            match maps::get_one(c.data(), MapType::from_guest(map), &key) {
                Some(value) => Ok(return_bytes(&mut c, &value, rbuf, rlen)),
                None => Ok(NOT_FOUND),
            }
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_set_header_map_pairs",
        |mut c: C<'_>, map: i32, ptr: i32, len: i32| {
            count(&mut c, "proxy_set_header_map_pairs");
            let data = read(&mut c, ptr, len)?;
            let Some(pairs) = unmarshal(&data) else {
                return Ok(INTERNAL_FAILURE);
            };
            let map = MapType::from_guest(map);
            if !check_set(&mut c, map)? {
                return Ok(BAD_ARGUMENT);
            }
            // Every header of the list is removed one by one through the
            // host's handlers (Content-Type is not part of nginx's response
            // list and stays); removed request headers stay in the list,
            // blanked, and are still proxied.
            let mut notes = Vec::new();
            if let Some(stream) = c.data_mut().cur_stream_mut() {
                match map {
                    MapType::Request => notes = builtins::clear_request_headers(stream),
                    MapType::Response => {
                        notes.extend(builtins::clear_response_headers(&mut stream.resp));
                    }
                    _ => {}
                }
            }
            maps::apply_notes(c.data_mut(), notes).map_err(crashed)?;
            for (k, v) in pairs {
                maps::set(c.data_mut(), map, &k, &v, MapOp::Set).map_err(crashed)?;
            }
            Ok(OK)
        },
    )?;

    for (name, op) in [
        ("proxy_add_header_map_value", MapOp::Add),
        ("proxy_replace_header_map_value", MapOp::Set),
    ] {
        linker.func_wrap(
            MODULE,
            name,
            move |mut c: C<'_>, map: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| {
                count(&mut c, name);
                let key = read(&mut c, kptr, klen)?;
                let value = read(&mut c, vptr, vlen)?;
                let map = MapType::from_guest(map);
                if !check_set(&mut c, map)? {
                    return Ok(BAD_ARGUMENT);
                }
                maps::set(c.data_mut(), map, &key, &value, op).map_err(crashed)?;
                Ok(OK)
            },
        )?;
    }

    linker.func_wrap(
        MODULE,
        "proxy_remove_header_map_value",
        |mut c: C<'_>, map: i32, kptr: i32, klen: i32| {
            count(&mut c, "proxy_remove_header_map_value");
            let key = read(&mut c, kptr, klen)?;
            let map = MapType::from_guest(map);
            if !check_set(&mut c, map)? {
                return Ok(BAD_ARGUMENT);
            }
            maps::set(c.data_mut(), map, &key, b"", MapOp::Remove).map_err(crashed)?;
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_get_property",
        |mut c: C<'_>, pptr: i32, plen: i32, rbuf: i32, rlen: i32| {
            count(&mut c, "proxy_get_property");
            let path = read(&mut c, pptr, plen)?;
            check_u32(&mut c, rbuf)?;
            check_u32(&mut c, rlen)?;
            match properties::get(c.data_mut(), &path) {
                Prop::Value(v) => Ok(return_bytes(&mut c, &v, rbuf, rlen)),
                Prop::NotFound => Ok(NOT_FOUND),
                Prop::Error => Ok(INTERNAL_FAILURE),
                Prop::Trap(msg) => Err(trap(&mut c, msg)),
            }
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_set_property",
        |mut c: C<'_>, pptr: i32, plen: i32, vptr: i32, vlen: i32| {
            count(&mut c, "proxy_set_property");
            let path = read(&mut c, pptr, plen)?;
            let value = read(&mut c, vptr, vlen)?;
            // A NULL pointer means "no value" (unset).
            let value = if vptr == 0 {
                None
            } else {
                Some(value.as_slice())
            };
            match properties::set(c.data_mut(), &path, value) {
                Prop::Value(_) => Ok(OK),
                Prop::NotFound => Ok(NOT_FOUND),
                Prop::Error => Ok(INTERNAL_FAILURE),
                Prop::Trap(msg) => Err(trap(&mut c, msg)),
            }
        },
    )?;

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

    linker.func_wrap(
        MODULE,
        "proxy_get_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, rdata: i32, rsize: i32, rcas: i32| {
            count(&mut c, "proxy_get_shared_data");
            let key = read(&mut c, kptr, klen)?;
            for p in [rdata, rsize, rcas] {
                check_u32(&mut c, p)?;
            }
            if !c.data().opts.shm_kv {
                return Err(trap(
                    &mut c,
                    "host trap (bad usage): failed getting value from shm (could not resolve namespace)",
                ));
            }
            let found = c.data().shared.get(&key).map(|v| (v.data.clone(), v.cas));
            let Some((data, cas)) = found else {
                return Ok(NOT_FOUND);
            };
            let Some(p) = mem::alloc_copy(&mut c, &data) else {
                return Err(trap(
                    &mut c,
                    "host trap (internal error): failed getting value from shm (no memory)",
                ));
            };
            let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            if !(mem::write_u32(&mut c, rdata, p)
                && mem::write_u32(&mut c, rsize, len)
                && mem::write_u32(&mut c, rcas, cas))
            {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_set_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| {
            count(&mut c, "proxy_set_shared_data");
            let key = read(&mut c, kptr, klen)?;
            let value = read(&mut c, vptr, vlen)?;
            if !c.data().opts.shm_kv {
                return Err(trap(
                    &mut c,
                    "host trap (bad usage): failed setting value to shm (could not resolve namespace)",
                ));
            }
            let cas = u32::from_ne_bytes(cas.to_ne_bytes());
            let shared = &mut c.data_mut().shared;
            let current = shared.get(&key).map_or(0, |v| v.cas);
            if cas != 0 && cas != current {
                return Ok(CAS_MISMATCH);
            }
            if vptr == 0 {
                shared.remove(&key);
            } else {
                shared.insert(
                    key,
                    SharedValue {
                        data: value,
                        cas: current.wrapping_add(1).max(1),
                    },
                );
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_register_shared_queue",
        |mut c: C<'_>, nptr: i32, nlen: i32, rid: i32| {
            count(&mut c, "proxy_register_shared_queue");
            let _name = read(&mut c, nptr, nlen)?;
            check_u32(&mut c, rid)?;
            Err::<i32, _>(trap(&mut c, "host trap (bad usage): could not find queue"))
        },
    )?;
    for name in ["proxy_dequeue_shared_queue", "proxy_enqueue_shared_queue"] {
        linker.func_wrap(
            MODULE,
            name,
            move |mut c: C<'_>, _q: i32, _a: i32, _b: i32| {
                count(&mut c, name);
                Err::<i32, _>(trap(&mut c, "host trap (bad usage): could not find queue"))
            },
        )?;
    }

    linker.func_wrap(
        MODULE,
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, nptr: i32, nlen: i32, rid: i32| {
            count(&mut c, "proxy_define_metric");
            let name = read(&mut c, nptr, nlen)?;
            mem::check_slice(&c, rid, 4).map_err(|m| trap(&mut c, m))?;
            define_metric(&mut c, kind, &name, rid)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, rvalue: i32| {
            count(&mut c, "proxy_get_metric");
            mem::check_typed_ptr(&c, rvalue, 8).map_err(|m| trap(&mut c, m))?;
            let idx = metric_index(id);
            let found = c.data().metrics.get(idx).map(|(_, m)| (m.kind, m.value));
            match found {
                Some((2, _)) => Err(trap(
                    &mut c,
                    format!("could not retrieve metric id \"{id}\": metric is a histogram"),
                )),
                Some((_, value)) => {
                    let v = u64::try_from(value).unwrap_or(0);
                    if !mem::write_u64(&mut c, rvalue, v) {
                        return Ok(INVALID_MEMORY_ACCESS);
                    }
                    Ok(OK)
                }
                None => Err(trap(
                    &mut c,
                    format!("could not retrieve metric id \"{id}\": metric not found"),
                )),
            }
        },
    )?;
    linker.func_wrap(MODULE, "proxy_increment_metric", |mut c: C<'_>, id: i32, offset: i64| {
        count(&mut c, "proxy_increment_metric");
        let idx = metric_index(id);
        match c.data_mut().metrics.get_mut(idx) {
            Some((_, m)) if m.kind != 2 => {
                m.value = m.value.saturating_add(offset);
                Ok(OK)
            }
            Some(_) => Err(trap(
                &mut c,
                format!("host trap (internal error): could not increment metric id \"{id}\": metric not a counter"),
            )),
            None => Err(trap(
                &mut c,
                format!("host trap (internal error): could not increment metric id \"{id}\": metric not found"),
            )),
        }
    })?;
    linker.func_wrap(MODULE, "proxy_record_metric", |mut c: C<'_>, id: i32, value: i64| {
        count(&mut c, "proxy_record_metric");
        let idx = metric_index(id);
        match c.data_mut().metrics.get_mut(idx) {
            Some((_, m)) if m.kind != 0 => {
                m.value = value;
                Ok(OK)
            }
            Some(_) => Err(trap(
                &mut c,
                format!("host trap (internal error): could not record value in metric id \"{id}\": metric is a counter"),
            )),
            None => Err(trap(
                &mut c,
                format!("host trap (internal error): could not record value in metric id \"{id}\": metric not found"),
            )),
        }
    })?;

    linker.func_wrap(
        MODULE,
        "proxy_call_foreign_function",
        |mut c: C<'_>, nptr: i32, nlen: i32, aptr: i32, alen: i32, rdata: i32, rsize: i32| {
            count(&mut c, "proxy_call_foreign_function");
            let name = read(&mut c, nptr, nlen)?;
            let _args = read(&mut c, aptr, alen)?;
            check_u32(&mut c, rdata)?;
            check_u32(&mut c, rsize)?;
            if name == b"resolve_lua" && c.data().opts.kong {
                return Err(trap(
                    &mut c,
                    "host trap (internal error): foreign function \"resolve_lua\" is not emulated",
                ));
            }
            Err::<i32, _>(trap(
                &mut c,
                "host trap (internal error): unknown foreign function",
            ))
        },
    )?;

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

fn check_set(c: &mut C<'_>, map: MapType) -> anyhow::Result<bool> {
    match maps::check_set(c.data(), map) {
        Ok(true) => Ok(true),
        Ok(false) => {
            if c.data().cur_stream().is_some() {
                c.data_mut().host_log(
                    LogLevel::Warn,
                    format!("NYI - set_map bad map_type: {map:?}"),
                );
            }
            Ok(false)
        }
        Err(msg) => Err(trap(c, msg)),
    }
}

fn set_tick_period(c: &mut C<'_>, period: i32) -> anyhow::Result<i32> {
    let Cur::Root { root } = c.data().cur else {
        return Err(trap(c, "can only set tick_period in root context"));
    };
    let period = u32::from_ne_bytes(period.to_ne_bytes());
    let Some(r) = c.data_mut().roots.get_mut(root) else {
        return Ok(INTERNAL_FAILURE);
    };
    if period != 0 && r.tick_period != 0 {
        return Err(trap(c, "tick_period already set"));
    }
    r.tick_period = period;
    r.next_tick =
        (period != 0).then(|| std::time::Instant::now() + Duration::from_millis(u64::from(period)));
    Ok(OK)
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
    let offset = mem::usize_of(offset);
    let len = data.len().min(mem::usize_of(max));
    if offset.checked_add(len).is_none() || u32::try_from(offset + len).is_err() {
        return Ok(INTERNAL_FAILURE);
    }
    if len == 0 {
        return Ok(OK);
    }
    let slice = data.get(..len).unwrap_or_default();
    let Some(p) = mem::alloc_copy(c, slice) else {
        return Ok(INTERNAL_FAILURE);
    };
    let l = u32::try_from(len).unwrap_or(u32::MAX);
    if !(mem::write_u32(c, rbuf, p) && mem::write_u32(c, rlen, l)) {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}

fn current_call_body(ctx: &HostCtx) -> Option<Vec<u8>> {
    let token = match ctx.cur {
        Cur::Http { stream, exec } => ctx
            .streams
            .get(&stream)
            .and_then(|s| s.pw.execs.get(exec))
            .and_then(|e| e.dispatch_call),
        Cur::Root { root } => ctx.roots.get(root).and_then(|r| r.dispatch_call),
        Cur::None => None,
    }?;
    ctx.calls
        .get(&token)
        .and_then(|call| call.result.as_ref())
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
    let offset = mem::usize_of(offset);
    let mut max = mem::usize_of(max);
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
fn has_length(stream: &super::state::Stream) -> bool {
    stream.resp.headers.contains(b"Content-Length") || stream.resp.content_length_n >= 0
}

fn resume_http_request(c: &mut C<'_>) -> i32 {
    match c.data_mut().cur_stream_mut() {
        Some(stream) => {
            stream.state = super::state::EnvState::Continue;
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
        let spawned = net::spawn_dispatch(
            ctx.tx.clone(),
            token,
            request,
            ctx.tls.clone(),
            cancel.clone(),
        );
        ctx.stats.io_start_time += io_started.elapsed();
        match spawned {
            Ok(handle) => ctx.threads.push(handle),
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
    if !mem::write_u32(c, rtoken, token) {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}

/// A dispatch that fails while the guest is in the host function traps with
/// the host's "dispatch failed" message.
fn dispatch_failed(c: &mut C<'_>, reason: &str) -> anyhow::Error {
    trap(c, format!("dispatch failed: {reason}"))
}

fn metric_index(id: i32) -> usize {
    let id = u32::from_ne_bytes(id.to_ne_bytes()) as usize;
    id.wrapping_sub(1)
}

fn define_metric(c: &mut C<'_>, kind: i32, name: &[u8], rid: i32) -> anyhow::Result<i32> {
    let name_text = String::from_utf8_lossy(name).into_owned();
    if !(0..=2).contains(&kind) {
        return Err(trap(
            c,
            format!("host trap (internal error): could not define metric \"{name_text}\": unknown type \"{kind}\""),
        ));
    }
    let filter = match c.data().cur {
        Cur::Root { root } => c.data().roots.get(root).map(|r| r.name.clone()),
        Cur::Http { stream, exec } => c
            .data()
            .streams
            .get(&stream)
            .and_then(|s| s.pw.execs.get(exec))
            .and_then(|e| c.data().roots.get(e.root))
            .map(|r| r.name.clone()),
        Cur::None => None,
    }
    .unwrap_or_default();
    if 4 + filter.len() + name.len() > 256 {
        return Err(trap(
            c,
            format!("host trap (internal error): could not define metric: name \"{name_text}\" too long"),
        ));
    }
    let full = format!("pw:{filter}:{name_text}");
    let metrics = &mut c.data_mut().metrics;
    let idx = match metrics.iter().position(|(n, _)| *n == full) {
        Some(i) => i,
        None => {
            metrics.push((
                full,
                Metric {
                    kind: u32::try_from(kind).unwrap_or(0),
                    value: 0,
                },
            ));
            metrics.len() - 1
        }
    };
    let id = u32::try_from(idx + 1).unwrap_or(u32::MAX);
    if !mem::write_u32(c, rid, id) {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}

/// The buffer size Kong's host computes for a map it truncates to `max`
/// pairs (`ngx_proxy_wasm_pairs_size`): the count, then up to `max` entries of
/// nginx's list, then pseudo-headers until the running count reaches `max`
/// (the first one always). The marshaller (`ngx_proxy_wasm_pairs_marshal`)
/// writes the pseudo-headers first and list entries up to `max` in all, so
/// what it writes and this size differ.
fn truncated_map_size(pairs: &[(Vec<u8>, Vec<u8>)], max: usize) -> usize {
    let entry = |(k, v): &(Vec<u8>, Vec<u8>)| 8 + k.len() + 1 + v.len() + 1;
    let (extras, list): (Vec<_>, Vec<_>) =
        pairs.iter().partition(|(k, _)| k.first() == Some(&b':'));
    let listed = list.len().min(max);
    let mut size = 4 + list.iter().take(listed).map(|p| entry(p)).sum::<usize>();
    for (n, p) in (listed..).zip(extras) {
        size += entry(p);
        if n >= max {
            break;
        }
    }
    size
}
