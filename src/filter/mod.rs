//! The proxy-wasm glue: a root context per filter configuration and an HTTP
//! context per request. All decisions are made by the host-agnostic modules;
//! this layer reads what the host knows, makes the calls the host allows in
//! each step, and writes the results back.

mod host;
mod http;
mod root;

use proxy_wasm::types::LogLevel;

/// `User-Agent` of every sideband call.
pub const USER_AGENT: &str = concat!("ping_auth-wasm/", env!("CARGO_PKG_VERSION"));

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Trace);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::default())
    });
}}
