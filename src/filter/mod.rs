//! The proxy-wasm adapter (Wasm only): a root context per filter
//! configuration, an HTTP context per request, and [`host::ProxyHost`], the
//! core's `Host` over the proxy-wasm ABI. Every decision is in the core.

mod host;
mod http;
mod root;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // Installs the SDK's logger behind the `log` facade. It unwraps the
    // status of `proxy_log`, which Kong's host answers `Ok` for every level
    // the SDK sends (ngx_proxy_wasm_hfuncs_proxy_log refuses only unknown
    // levels), so a log line cannot trap there.
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::default())
    });
}}
