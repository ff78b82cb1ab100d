//! Root context: one per filter configuration (one per filter-chain entry or
//! filter plugin in Kong). Parses the configuration once in `on_configure` and
//! hands it to every request, with the configuration's 429 back-off.

use super::host;
use super::http::Http;
use crate::backoff::Backoff;
use crate::config::{self, Config};
use crate::failure::Level;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{BufferType, ContextType};
use std::cell::RefCell;
use std::rc::Rc;

#[derive(Default)]
pub struct Root {
    config: Option<Rc<Config>>,
    backoff: Rc<RefCell<Backoff>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        host::log(
            Level::Info,
            concat!("ping_auth ", env!("CARGO_PKG_VERSION"), " loaded"),
        );
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let bytes = host::buffer(BufferType::PluginConfiguration, usize::MAX).unwrap_or_default();
        match config::parse(&bytes) {
            Ok(c) => {
                announce(&c);
                self.config = Some(Rc::new(c));
                self.backoff = Rc::new(RefCell::new(Backoff::default()));
                true
            }
            Err(e) => {
                host::log(Level::Error, &format!("invalid configuration: {e}"));
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Http::new(
            self.config.clone(),
            self.backoff.clone(),
        )))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One line per configuration saying what applies, including the Lua options
/// this host cannot honour per filter.
fn announce(c: &Config) {
    host::log(
        Level::Info,
        &format!(
            "configured: sideband {}://{}{}, timeout {} ms, response hook {}; \
             connection_keepAlive_ms is not applied (the host opens one connection per call); \
             sideband TLS verification follows the host's global wasm TLS settings",
            c.service_url.scheme.as_str(),
            c.service_url.authority(),
            c.service_url.sideband_path("request"),
            c.connection_timeout_ms,
            if c.enable_response_hook { "on" } else { "off" },
        ),
    );
    if c.shared_secret.expose().starts_with("{vault://") {
        host::log(
            Level::Warn,
            "shared_secret is an unresolved Kong vault reference ({vault://...}); the host passed it \
             as is, so the policy provider will receive it literally and refuse it",
        );
    }
    if !c.verify_service_certificate {
        host::log(
            Level::Warn,
            "verify_service_certificate=false is not applied per filter: Kong verifies sideband \
             certificates unless nginx_wasm_tls_verify_cert/nginx_wasm_tls_verify_host are off",
        );
    }
}
