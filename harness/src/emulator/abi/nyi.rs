//! Host functions the host lists but does not implement: each traps with
//! `host trap (function not yet implemented): <name>` (with the host's
//! signature, so a module declaring another one fails to instantiate).

use super::common::{count, trap, MODULE};
use crate::emulator::state::HostCtx;
use wasmtime::{FuncType, Linker, ValType};

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

/// Registers this family's host functions.
pub(super) fn add(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
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
    Ok(())
}
