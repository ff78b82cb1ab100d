//! A proxy-wasm filter that does nothing: every HTTP callback keeps the SDK's
//! default (continue), and no host function is called.
//!
//! `make bench` runs it in the emulator with the same request as the small
//! GET scenario. Its guest time is what the emulator and Wasmtime cost per
//! request for any filter (entering and leaving each callback, the SDK's
//! context bookkeeping); the bench subtracts it to show the filter's share.

#![cfg(target_arch = "wasm32")]

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Nothing))
    }
}

struct Nothing;

impl Context for Nothing {}

impl HttpContext for Nothing {}
