//! Root context: one per filter configuration (one per filter-chain entry or
//! filter plugin in Kong). The configuration is compiled once in
//! `on_configure` and shared by every request with its 429 back-off, decision cache and
//! metric ids ([`Shared`]), which a new configuration replaces.

use super::host::{self, ProxyHost};
use super::http::Http;
use crate::config::{self, Config};
use crate::exchange::{Exchange, Shared};
use crate::metrics::Metrics;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::rc::Rc;

#[derive(Default)]
pub struct Root {
    config: Option<Rc<Config>>,
    shared: Rc<Shared>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        log::info!(concat!("ping_auth ", env!("CARGO_PKG_VERSION"), " loaded"));
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let metrics = Metrics::define(&mut ProxyHost);
        match config::parse(&host::configuration()) {
            Ok(c) => {
                for (level, line) in c.announcement() {
                    log::log!(level, "{line}");
                }
                self.shared = Rc::new(Shared::new(Some(&c), metrics));
                self.config = Some(Rc::new(c));
                true
            }
            Err(e) => {
                log::error!("invalid configuration: {e}");
                self.shared = Rc::new(Shared::new(None, metrics));
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        let exchange = Exchange::new(self.config.clone(), self.shared.clone());
        Some(Box::new(Http(exchange)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}
