//! The proxy-wasm host functions (`env.proxy_*`), with ngx_wasm_module's
//! signatures, step checks, return statuses and traps.
//!
//! Host functions the module lists but does not implement trap with
//! `host trap (function not yet implemented): <name>` (`nyi.rs`).
//! Signatures are the host's: a module whose import has another signature
//! (e.g. `proxy_get_log_level` with one parameter, as the Rust SDK declares
//! it) fails to instantiate, as it fails to load in Kong.
//!
//! One file per family of host functions, each registering its own
//! functions; `common.rs` holds what they share. The families import
//! nothing from one another, nor from this file.

mod buffers;
mod common;
mod dispatch;
mod flow;
mod foreign;
mod header_maps;
mod logging;
mod metrics;
mod nyi;
mod properties;
mod shared;

use crate::emulator::state::HostCtx;
use wasmtime::Linker;

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

/// Registers every `env` host function.
pub(crate) fn add_to_linker(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
    nyi::add(linker)?;
    logging::add(linker)?;
    buffers::add(linker)?;
    header_maps::add(linker)?;
    properties::add(linker)?;
    flow::add(linker)?;
    dispatch::add(linker)?;
    shared::add(linker)?;
    metrics::add(linker)?;
    foreign::add(linker)?;
    Ok(())
}
