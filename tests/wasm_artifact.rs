//! The built `.wasm` loads on Kong 3.9/3.10: it imports only host functions
//! ngx_wasm_module provides and only the WASI subset those releases
//! implement (kong-wasm.md §4.1, §9) — any other import makes Kong refuse to
//! start — and it exports the proxy-wasm ABI 0.2.1 entry points.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)] // test code

mod common;

/// `env` functions Kong's host (ngx_wasm_module) registers.
const HOST_ENV: &[&str] = &[
    "proxy_add_header_map_value",
    "proxy_call_foreign_function",
    "proxy_close_stream",
    "proxy_continue_request",
    "proxy_continue_response",
    "proxy_continue_stream",
    "proxy_define_metric",
    "proxy_dequeue_shared_queue",
    "proxy_dispatch_http_call",
    "proxy_done",
    "proxy_enqueue_shared_queue",
    "proxy_get_buffer_bytes",
    "proxy_get_configuration",
    "proxy_get_current_time_nanoseconds",
    "proxy_get_header_map_pairs",
    "proxy_get_header_map_value",
    "proxy_get_log_level",
    "proxy_get_metric",
    "proxy_get_property",
    "proxy_get_shared_data",
    "proxy_get_status",
    "proxy_grpc_call",
    "proxy_grpc_cancel",
    "proxy_grpc_close",
    "proxy_grpc_send",
    "proxy_grpc_stream",
    "proxy_http_call",
    "proxy_increment_metric",
    "proxy_log",
    "proxy_record_metric",
    "proxy_register_shared_queue",
    "proxy_remove_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_resolve_shared_queue",
    "proxy_send_http_response",
    "proxy_send_local_response",
    "proxy_set_buffer_bytes",
    "proxy_set_effective_context",
    "proxy_set_header_map_pairs",
    "proxy_set_property",
    "proxy_set_shared_data",
    "proxy_set_tick_period_milliseconds",
];

/// The WASI preview1 functions of Kong 3.4–3.10's host.
const HOST_WASI: &[&str] = &[
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "environ_get",
    "environ_sizes_get",
    "fd_close",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_read",
    "fd_seek",
    "fd_write",
    "path_open",
    "proc_exit",
    "random_get",
];

fn leb(b: &[u8], i: &mut usize) -> u32 {
    let (mut r, mut s) = (0u32, 0);
    loop {
        let x = b[*i];
        *i += 1;
        r |= u32::from(x & 0x7f) << s;
        s += 7;
        if x < 0x80 {
            return r;
        }
    }
}

fn name(b: &[u8], i: &mut usize) -> String {
    let l = leb(b, i) as usize;
    let s = String::from_utf8(b[*i..*i + l].to_vec()).unwrap();
    *i += l;
    s
}

/// (imports as module/name, function exports) of a module.
fn interface(wasm: &[u8]) -> (Vec<(String, String)>, Vec<String>) {
    assert_eq!(&wasm[..8], b"\0asm\x01\0\0\0");
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut i = 8;
    while i < wasm.len() {
        let id = wasm[i];
        i += 1;
        let size = leb(wasm, &mut i) as usize;
        let end = i + size;
        let mut j = i;
        match id {
            2 => {
                for _ in 0..leb(wasm, &mut j) {
                    let m = name(wasm, &mut j);
                    let n = name(wasm, &mut j);
                    let kind = wasm[j];
                    j += 1;
                    match kind {
                        0 => drop(leb(wasm, &mut j)),
                        1 => {
                            j += 1;
                            let flags = leb(wasm, &mut j);
                            leb(wasm, &mut j);
                            if flags & 1 == 1 {
                                leb(wasm, &mut j);
                            }
                        }
                        2 => {
                            let flags = leb(wasm, &mut j);
                            leb(wasm, &mut j);
                            if flags & 1 == 1 {
                                leb(wasm, &mut j);
                            }
                        }
                        _ => j += 2,
                    }
                    imports.push((m, n));
                }
            }
            7 => {
                for _ in 0..leb(wasm, &mut j) {
                    let n = name(wasm, &mut j);
                    let kind = wasm[j];
                    j += 1;
                    leb(wasm, &mut j);
                    if kind == 0 {
                        exports.push(n);
                    }
                }
            }
            _ => {}
        }
        i = end;
    }
    (imports, exports)
}

#[test]
fn imports_only_what_kong_provides() {
    let wasm = std::fs::read(common::wasm()).unwrap();
    let (imports, exports) = interface(&wasm);
    assert!(!imports.is_empty());
    for (module, name) in &imports {
        let ok = match module.as_str() {
            "env" => HOST_ENV.contains(&name.as_str()),
            "wasi_snapshot_preview1" => HOST_WASI.contains(&name.as_str()),
            _ => false,
        };
        assert!(
            ok,
            "import {module}.{name} is not provided by Kong 3.9/3.10's Wasm host"
        );
    }
    for required in [
        "proxy_abi_version_0_2_1",
        "proxy_on_context_create",
        "proxy_on_configure",
        "proxy_on_request_headers",
        "proxy_on_request_body",
        "proxy_on_response_headers",
        "proxy_on_response_body",
        "proxy_on_http_call_response",
        "proxy_on_memory_allocate",
    ] {
        assert!(
            exports.iter().any(|e| e == required),
            "missing export {required}"
        );
    }
}

#[test]
fn file_name_gives_the_kong_filter_name() {
    // Kong names a filter after its file; `ping_auth` (underscore) coexists
    // with the Lua plugin `ping-auth`.
    let path = common::wasm();
    assert_eq!(path.file_name().unwrap(), "ping_auth.wasm");
}
