//! Header maps: reading the request, response and dispatch response
//! headers, and changing them through the host's rules (`maps.rs`,
//! `builtins.rs`), with the host's 100-entry truncation.

use super::common::{
    check_u32, count, crashed, read, return_bytes, trap, BAD_ARGUMENT, C, INTERNAL_FAILURE,
    INVALID_MEMORY_ACCESS, MODULE, NOT_FOUND, OK,
};
use crate::emulator::api::LogLevel;
use crate::emulator::builtins;
use crate::emulator::headers::{marshal, unmarshal, MapOp};
use crate::emulator::maps::{self, MapType};
use crate::emulator::state::HostCtx;
use wasmtime::Linker;

/// Registers this family's host functions.
pub(super) fn add(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
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
    Ok(())
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
