//! HTTP vocabulary shared by every layer: a header, a complete response the
//! filter sends itself, and the header-name rule.

/// One request or response header: a lower-cased name and the raw value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(name: &str, value: impl Into<Vec<u8>>) -> Self {
        Header {
            name: name.to_ascii_lowercase(),
            value: value.into(),
        }
    }
}

/// A complete response for the client, built by the filter.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    pub status: u16,
    /// Lower-cased names; a name may repeat (one line per value).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn empty(status: u16) -> Self {
        Reply {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Headers the filter never copies from a policy reply: the host computes the
/// framing of the response it sends (Kong ≥ 3.6 also drops a policy's
/// `Transfer-Encoding`; the Lua plugin let a policy's `Content-Length` override
/// Kong's, which broke responses whose body the policy changed).
pub const FRAMING_HEADERS: &[&str] = &["content-length", "transfer-encoding"];

/// True for an RFC 9110 token (a valid header name).
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
