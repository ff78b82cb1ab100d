//! The HTTP context: one per request. Each proxy-wasm step is handed to the
//! request's [`Exchange`] with the host; nothing is decided here.

use super::host::ProxyHost;
use crate::exchange::Exchange;
use crate::host::Action as Next;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

pub struct Http(pub Exchange);

fn action(next: Next) -> Action {
    match next {
        Next::Continue => Action::Continue,
        Next::Pause => Action::Pause,
    }
}

impl Context for Http {
    fn on_http_call_response(&mut self, token: u32, _headers: usize, body_size: usize, _: usize) {
        self.0.on_call_response(&mut ProxyHost, token, body_size);
    }
}

impl HttpContext for Http {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        action(self.0.on_request_headers(&mut ProxyHost))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.0
                .on_request_body(&mut ProxyHost, body_size, end_of_stream),
        )
    }

    fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        action(self.0.on_response_headers(&mut ProxyHost))
    }

    fn on_http_response_body(&mut self, body_size: usize, _end_of_stream: bool) -> Action {
        action(self.0.on_response_body(&mut ProxyHost, body_size))
    }
}
