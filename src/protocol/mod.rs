//! The sideband protocol as this filter speaks it (docs/sideband-protocol.md):
//! the two endpoints and their call headers, the payloads, and the reading of
//! the policy server's replies into decisions.
//!
//! - [`request`]: the `/sideband/request` payload built from the client request.
//! - [`reply`]: parsing helpers shared by both replies.
//! - [`decision`]: a `/sideband/request` reply → deny, or allow with directives.
//! - [`response_hook`]: the `/sideband/response` payload and its reply.
//! - [`json`]: JSON text the way the Lua plugin's encoder writes it.

pub mod decision;
pub mod json;
pub mod reply;
pub mod request;
pub mod response_hook;

use crate::failure::Call;
use crate::url::Url;

/// `User-Agent` of every sideband call.
pub const USER_AGENT: &str = concat!("ping_auth-wasm/", env!("CARGO_PKG_VERSION"));

/// One sideband endpoint, compiled from the configuration once: its path and
/// the headers of every call to it (pseudo-headers first, then content type,
/// User-Agent and the shared secret).
#[derive(Clone)]
pub struct Endpoint {
    pub call: Call,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Endpoint {
    pub fn new(url: &Url, call: Call, secret_header: &str, secret: &str) -> Endpoint {
        let path = url.sideband_path(call.path());
        let headers = [
            (":method", "POST"),
            (":path", path.as_str()),
            (":authority", url.authority().as_str()),
            (":scheme", url.scheme.as_str()),
            ("content-type", "application/json"),
            ("user-agent", USER_AGENT),
            (secret_header, secret),
        ]
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
        Endpoint {
            call,
            path,
            headers,
        }
    }
}

/// Never prints the headers: one of them is the shared secret.
impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("path", &self.path)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::parse_url;

    #[test]
    fn endpoints_carry_path_authority_and_secret() {
        let url = parse_url("https://PDP:8443/base?x=1").unwrap();
        let e = Endpoint::new(&url, Call::Response, "X-Secret", "s3");
        assert_eq!(e.path, "/base/sideband/response?x=1");
        let get = |n: &str| {
            e.headers
                .iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(":authority"), Some("pdp:8443"));
        assert_eq!(get(":path"), Some("/base/sideband/response?x=1"));
        assert_eq!(get(":scheme"), Some("https"));
        assert_eq!(get("X-Secret"), Some("s3"));
        assert_eq!(get("user-agent"), Some(USER_AGENT));
        assert!(!format!("{e:?}").contains("s3"));
    }
}
