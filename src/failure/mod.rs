//! The failure policy: every way a sideband exchange or the response hook's
//! upstream call can fail, the response the client gets, and the log line.
//!
//! Fail closed: each variant ends in a deliberate client response; none lets
//! the request through (the table: docs/sideband-protocol.md#failure-table).
//! Status codes follow the Lua plugin 1.2.0 except where it had a bug
//! (docs/sideband-protocol.md#differences-from-the-lua-plugin): an unreachable
//! policy provider is 502 (Lua 1.1.0+ answered 500 by accident), malformed
//! replies are 502 (Lua crashed into 500), and a 429 never breaks later requests.

pub mod backoff;
pub mod policy;

use crate::http::Reply;
pub use log::Level;

/// Which sideband call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `/sideband/request`
    Request,
    /// `/sideband/response`
    Response,
}

impl Call {
    pub fn path(self) -> &'static str {
        match self {
            Call::Request => "request",
            Call::Response => "response",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The host could not complete the call (no `:status`): connection
    /// refused, timeout, TLS handshake, DNS. `detail` is `:dispatch_status` or
    /// the synchronous dispatch error.
    Unreachable {
        call: Call,
        target: String,
        detail: String,
    },
    /// The reply body is not JSON (any status but 429).
    NotJson {
        call: Call,
        status: u16,
        error: String,
    },
    /// 4xx other than 413 and 429, e.g. 401 for a wrong shared secret.
    Rejected {
        call: Call,
        status: u16,
        message: String,
        id: String,
    },
    /// 413 from the policy provider: relayed with its JSON body.
    TooLarge {
        call: Call,
        body: Vec<u8>,
        message: String,
        id: String,
    },
    /// 5xx from the policy provider.
    ServerError {
        call: Call,
        status: u16,
        message: String,
        id: String,
    },
    /// 429 from the policy provider, or its back-off still running.
    RateLimited {
        retry_after_secs: u64,
        from_provider: bool,
    },
    /// A 2xx reply whose content cannot be applied.
    Malformed { call: Call, what: String },
    /// The policy asked for a request-body change, which this host can only
    /// apply through the response hook's own upstream call.
    BodyChangeUnsupported,
    /// The response hook found no upstream to call.
    NoUpstream { what: String },
    /// The response hook's upstream call failed.
    UpstreamFailed { target: String, detail: String },
    /// The response hook's upstream call timed out (the host's
    /// `:dispatch_status` said so, see [`timed_out`]): 504.
    UpstreamTimeout { target: String },
    /// The host sent the request upstream before a decision (it skipped the
    /// body step of a request that announced a body and sent none): the
    /// upstream's response is replaced with 502 and the connection closed.
    UpstreamBeforeDecision,
    /// Response hook on: a chunked request whose body was empty was allowed,
    /// and the host proxied it itself (no body step for an empty body), so
    /// the policy cannot see the response: 502 instead of the unchecked one.
    ResponseHookSkipped,
    /// The upstream's response body is larger than `max_response_body_bytes`.
    UpstreamTooLarge { size: usize, limit: usize },
    /// The request body did not fit the host's body buffer, so the response
    /// hook cannot forward it.
    RequestBodyUnreadable { size: usize },
    /// The host shows the filter only part of the request's headers, so
    /// the policy provider cannot see them all: 431.
    TooManyHeaders { visible: usize },
    /// The client certificate cannot be read into the payload: 400, as in Lua.
    BadClientCertificate { error: String },
    /// The host refused an operation the filter needs.
    Host { what: String },
}

const LIMIT_EXCEEDED: &str = "LIMIT_EXCEEDED";

impl Failure {
    /// The response the client gets.
    pub fn reply(&self) -> Reply {
        match self {
            Failure::TooLarge { body, .. } => Reply {
                status: 413,
                headers: vec![("content-type".into(), "application/json".into())],
                body: body.clone(),
            },
            Failure::RateLimited {
                retry_after_secs, ..
            } => {
                let secs = (*retry_after_secs).max(1);
                let unit = if secs == 1 { "second" } else { "seconds" };
                Reply {
                    status: 429,
                    headers: vec![
                        ("content-type".into(), "application/json".into()),
                        ("retry-after".into(), secs.to_string()),
                    ],
                    body: format!(
                        "{{\"code\":\"{LIMIT_EXCEEDED}\",\"message\":\"The request exceeded the allowed rate limit. Please try after {secs} {unit}.\"}}"
                    )
                    .into_bytes(),
                }
            }
            Failure::UpstreamTimeout { .. } => Reply::empty(504),
            Failure::RequestBodyUnreadable { .. } => Reply::empty(413),
            Failure::TooManyHeaders { .. } => Reply::empty(431),
            Failure::BadClientCertificate { .. } => Reply::empty(400),
            Failure::NoUpstream { .. } | Failure::Host { .. } => Reply::empty(500),
            _ => Reply::empty(502),
        }
    }

    /// Writes [`Failure::log`]'s line.
    pub fn write_log(&self) {
        let (level, message) = self.log();
        log::log!(level, "{message}");
    }

    /// The log line (level and message). Never contains the shared secret.
    pub fn log(&self) -> (Level, String) {
        match self {
            Failure::Unreachable { call, target, detail } => (
                Level::Error,
                format!("Failed to send sideband {} to {target}: {detail}", call.path()),
            ),
            Failure::NotJson { call, status, error } => (
                Level::Error,
                format!(
                    "Unable to parse JSON body returned from policy provider (sideband {}, status {status}). Error: {error}",
                    call.path()
                ),
            ),
            Failure::Rejected { call, status, message, id } => (
                Level::Warn,
                format!(
                    "Sideband {} denied with status code {status}: {message} ({id})",
                    call.path()
                ),
            ),
            Failure::TooLarge { call, message, id, .. } => (
                Level::Warn,
                format!(
                    "Sideband {} denied with status code 413: {message} ({id})",
                    call.path()
                ),
            ),
            Failure::ServerError { call, status, message, id } => (
                Level::Error,
                format!(
                    "Sideband {} failed with status code {status}: {message} ({id})",
                    call.path()
                ),
            ),
            Failure::RateLimited { retry_after_secs, from_provider } => (
                Level::Warn,
                if *from_provider {
                    format!("Policy provider answered 429; pausing sideband calls of this filter for {retry_after_secs} s")
                } else {
                    format!("Sideband calls paused after a 429 from the policy provider; {retry_after_secs} s remaining")
                },
            ),
            Failure::Malformed { call, what } => (
                Level::Error,
                format!("Invalid sideband {} reply from policy provider: {what}", call.path()),
            ),
            Failure::BodyChangeUnsupported => (
                Level::Error,
                "The policy provider changed the request body, which Kong's Wasm host cannot apply \
                 to a request it proxies itself; set enable_response_hook to true to apply body changes"
                    .into(),
            ),
            Failure::NoUpstream { what } => (
                Level::Error,
                format!("Response hook cannot determine the upstream: {what}"),
            ),
            Failure::UpstreamFailed { target, detail } => (
                Level::Error,
                format!("Upstream call to {target} failed: {detail}"),
            ),
            Failure::UpstreamTimeout { target } => (
                Level::Error,
                format!("Upstream call to {target} failed: timeout"),
            ),
            Failure::UpstreamBeforeDecision => (
                Level::Error,
                "the upstream was called before a policy decision (request announced a body but \
                 sent none, so the host skipped the body step); answering 502"
                    .into(),
            ),
            Failure::ResponseHookSkipped => (
                Level::Error,
                "the response hook cannot run for this request: its chunked body was empty, so \
                 the host skipped the body step and proxied the allowed request itself, and the \
                 policy provider cannot see a response the host fetched; answering 502"
                    .into(),
            ),
            Failure::UpstreamTooLarge { size, limit } => (
                Level::Error,
                format!(
                    "Upstream response body of {size} bytes exceeds max_response_body_bytes ({limit}); answering 502"
                ),
            ),
            Failure::RequestBodyUnreadable { size } => (
                Level::Error,
                format!(
                    "Request body of {size} bytes is larger than the host's client body buffer, so the \
                     response hook cannot forward it; answering 413 (raise nginx_http_client_body_buffer_size)"
                ),
            ),
            Failure::TooManyHeaders { visible } => (
                Level::Error,
                format!(
                    "Request has {visible} or more headers, the most Kong's Wasm host shows a filter; \
                     the policy provider could not see them all, so it is refused with 431"
                ),
            ),
            Failure::BadClientCertificate { error } => (
                Level::Error,
                format!("Client certificate cannot be read: {error}; answering 400"),
            ),
            Failure::Host { what } => (Level::Error, format!("Host error: {what}")),
        }
    }
}

impl Failure {
    /// The back-off this failure starts: a 429 from the policy server pauses
    /// the filter configuration's sideband calls for its `Retry-After`
    /// (at least 1 s). A 429 answered from a running back-off starts none.
    pub fn backoff_secs(&self) -> Option<u64> {
        match self {
            Failure::RateLimited {
                retry_after_secs,
                from_provider: true,
            } => Some((*retry_after_secs).max(1)),
            _ => None,
        }
    }
}

/// Whether a host's `:dispatch_status` reports a timeout (Kong's host writes
/// `timeout`; other values are connection and TLS errors).
pub fn timed_out(dispatch_status: &str) -> bool {
    dispatch_status.trim().eq_ignore_ascii_case("timeout")
}

/// Reads `message` and `id` from a JSON error body, `nil` when absent (as the
/// Lua plugin prints them).
pub fn message_and_id(body: &serde_json::Value) -> (String, String) {
    let field = |k: &str| match body.get(k) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => "nil".to_string(),
    };
    (field("message"), field("id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        let u = Failure::Unreachable {
            call: Call::Request,
            target: "pdp:8443".into(),
            detail: "timeout".into(),
        };
        assert_eq!(u.reply().status, 502);
        let t = Failure::UpstreamTimeout {
            target: "up:80".into(),
        };
        assert_eq!(t.reply().status, 504);
        assert!(timed_out("timeout") && !timed_out("broken connection"));
        let f = Failure::UpstreamFailed {
            target: "up:80".into(),
            detail: "broken connection".into(),
        };
        assert_eq!(f.reply().status, 502);
        assert_eq!(Failure::UpstreamBeforeDecision.reply().status, 502);
        let r = Failure::RateLimited {
            retry_after_secs: 5,
            from_provider: true,
        }
        .reply();
        assert_eq!(r.status, 429);
        assert_eq!(r.header("retry-after"), Some("5"));
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["code"], "LIMIT_EXCEEDED");
        assert!(v["message"].as_str().unwrap().contains("5 seconds"));
        let tripping = Failure::RateLimited {
            retry_after_secs: 0,
            from_provider: true,
        };
        assert_eq!(tripping.backoff_secs(), Some(1));
        let running = Failure::RateLimited {
            retry_after_secs: 3,
            from_provider: false,
        };
        assert_eq!(running.backoff_secs(), None);
    }
}
