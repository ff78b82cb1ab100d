//! A scripted network: the caller answers the worker's dispatch calls and
//! upstream requests itself, in process, instead of the emulator opening
//! sockets ([`super::Emulator::set_network`]).
//!
//! The fuzz target `fuzz/fuzz_targets/wasm.rs` uses it to give the filter any
//! reply at all (statuses, `:dispatch_status` values, a head with a body the
//! host cannot hand over) thousands of times a second, without threads or
//! loopback connections. Everything else (the ABI, the lifecycle, the host's
//! header slots, traps) is the emulator as usual. Answers are delivered like
//! network completions: after the callback that made the call has returned.

use super::headers::HeaderList;
use super::net::{CallResult, SockStatus, UpstreamError, UpstreamResponse};

/// How a scripted dispatch failed (the host's `:dispatch_status` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallFailure {
    Timeout,
    BrokenConnection,
    TlsFailure,
    ResolverFailure,
    ReaderFailure,
}

/// The answer to one dispatch call.
#[derive(Clone, Debug)]
pub enum CallAnswer {
    /// A response was read: `:status`, headers, body.
    Reply {
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
    },
    /// No response (`:dispatch_status` says why).
    Failed(CallFailure),
    /// The head was read, then the read timed out after `received` body bytes:
    /// the host shows `:status` and the size, but no body buffer (seen on a
    /// real build; see `net::run_dispatch`).
    TimedOutInBody {
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        received: usize,
    },
}

/// The answer to one upstream request (the host proxying, response hook off).
#[derive(Clone, Debug)]
pub enum UpstreamAnswer {
    Reply {
        status: u16,
        headers: Vec<(Vec<u8>, Vec<u8>)>,
        body: Vec<u8>,
    },
    /// The proxy failed: nginx answers the client with this status (502, 504).
    Failed(u16),
}

/// A request as the worker would have written it on the wire.
#[derive(Clone, Debug)]
pub struct Outgoing<'a> {
    /// `host:port` the worker would connect to.
    pub target: String,
    /// Request line and headers, as written (`\r\n` separated).
    pub head: &'a [u8],
    pub body: &'a [u8],
}

impl Outgoing<'_> {
    /// The request target of the request line (`/sideband/request`).
    pub fn path(&self) -> &str {
        let line = self.head.split(|&b| b == b'\r').next().unwrap_or_default();
        std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
    }
}

/// Answers the worker's network operations.
pub trait Network: Send + Sync {
    fn call(&self, request: &Outgoing<'_>) -> CallAnswer;
    fn upstream(&self, request: &Outgoing<'_>) -> UpstreamAnswer;
}

fn header_list(headers: &[(Vec<u8>, Vec<u8>)]) -> HeaderList {
    let mut list = HeaderList::new();
    for (name, value) in headers {
        list.push_raw(name, value);
    }
    list
}

pub(crate) fn call_result(answer: CallAnswer) -> CallResult {
    match answer {
        CallAnswer::Reply {
            status,
            headers,
            body,
        } => CallResult {
            status: SockStatus::Ok,
            error: String::new(),
            status_code: status,
            headers: header_list(&headers),
            body,
            partial_body: None,
        },
        CallAnswer::Failed(why) => {
            let status = match why {
                CallFailure::Timeout => SockStatus::Timeout,
                CallFailure::BrokenConnection => SockStatus::BrokenConnection,
                CallFailure::TlsFailure => SockStatus::TlsFailure,
                CallFailure::ResolverFailure => SockStatus::ResolverFailure,
                CallFailure::ReaderFailure => SockStatus::ReaderFailure,
            };
            CallResult {
                status,
                error: format!("tcp socket - scripted {}", status.as_str()),
                status_code: 0,
                headers: HeaderList::new(),
                body: Vec::new(),
                partial_body: None,
            }
        }
        CallAnswer::TimedOutInBody {
            status,
            headers,
            received,
        } => CallResult {
            status: SockStatus::Timeout,
            error: "tcp socket - scripted timeout in the body".into(),
            status_code: status,
            headers: header_list(&headers),
            body: Vec::new(),
            partial_body: Some(received),
        },
    }
}

pub(crate) fn upstream_result(
    answer: UpstreamAnswer,
    target: &str,
) -> Result<UpstreamResponse, UpstreamError> {
    match answer {
        UpstreamAnswer::Reply {
            status,
            headers,
            body,
        } => {
            let headers = header_list(&headers);
            let chunked = headers.get(b"Transfer-Encoding").is_some();
            Ok(UpstreamResponse {
                status,
                content_length: (!chunked).then_some(body.len() as u64),
                headers,
                body,
                chunked,
                addr: target.to_string(),
            })
        }
        UpstreamAnswer::Failed(status) => Err(UpstreamError {
            status,
            message: format!("scripted upstream failure ({status})"),
        }),
    }
}
