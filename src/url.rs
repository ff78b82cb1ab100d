//! Every URL the filter reads: the `service_url` and `upstream_url`
//! settings, the `url` of a policy reply, and a `Host` header's host.

/// The JSON Schema `pattern` both schemas use for URL fields. [`parse_url`]
/// accepts exactly the strings this pattern accepts (the schema fixtures test it).
pub const URL_PATTERN: &str = concat!(
    r"^[Hh][Tt][Tt][Pp][Ss]?://",
    r"([A-Za-z0-9._~-]+|\[[0-9A-Fa-f:.]+\])",
    r"(:(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3}))?",
    r#"([/?][!"$-~]*)?$(?!\n)"#
);

/// Scheme of a URL field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed `http(s)://host[:port][/path][?query]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub scheme: Scheme,
    /// Lower-cased host name, or an IPv6 literal with its brackets.
    pub host: String,
    /// Explicit port, or the scheme's default.
    pub port: u16,
    /// Raw path, `/` when absent.
    pub path: String,
    /// Raw query without `?`; empty when absent.
    pub query: String,
}

impl Url {
    /// `host:port`: the dispatch target and the `Host` header (port always shown, as in Lua).
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// Path (and query) of a sideband endpoint: the service path, a `/` if it
    /// does not end with one, then `sideband/<endpoint>`, then the service query.
    pub fn sideband_path(&self, endpoint: &str) -> String {
        let mut p = self.path.clone();
        if !p.ends_with('/') {
            p.push('/');
        }
        p.push_str("sideband/");
        p.push_str(endpoint);
        if !self.query.is_empty() {
            p.push('?');
            p.push_str(&self.query);
        }
        p
    }
}

/// Parses a URL field (`service_url`, `upstream_url`).
///
/// Two steps. First the text is held to [`URL_PATTERN`], the rule Kong's
/// schema applies, with the Lua plugin's messages for scheme and host, so
/// the schemas and `on_configure` refuse the same strings. Then the `url`
/// crate parses it: the scheme, the port (explicit or the scheme's default)
/// and the host's validity (an IPv6 literal such as `[::1::2]` passes the
/// pattern but not the URL standard) come from it.
///
/// The host, path and query are kept as written, not as `url` serialises
/// them: it rewrites numeric hosts (`2130706433` → `127.0.0.1`), compresses
/// IPv6 literals, removes dot segments and percent-encodes quotes, and each
/// would change the `Host` and path the policy server sees
/// (test `url_crate_would_change_what_the_policy_server_sees`).
pub fn parse_url(raw: &str) -> Result<Url, String> {
    let (scheme_text, authority, tail) = split_scheme(raw)?;
    if authority.is_empty() {
        return Err("URL host cannot be blank".into());
    }
    if authority.contains('@') {
        return Err("URL must not contain credentials (user@host)".into());
    }
    let (host, _) = split_host_port(authority)?;
    if tail.contains('#') {
        return Err("URL must not contain a fragment (#)".into());
    }
    if !tail.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "URL path and query must be printable ASCII without spaces (percent-encode other characters)".into(),
        );
    }
    let parsed = ::url::Url::parse(raw).map_err(|e| format!("URL is not valid: {e}"))?;
    let scheme = match parsed.scheme() {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        _ => {
            return Err(format!(
                "URL scheme must be either 'http' or 'https' ({scheme_text})"
            ))
        }
    };
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    Ok(Url {
        scheme,
        host: host.to_ascii_lowercase(),
        port: parsed
            .port_or_known_default()
            .unwrap_or(scheme.default_port()),
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        query: query.into(),
    })
}

/// `scheme://authority` and the rest (path and query), with the Lua
/// plugin's messages for a missing or foreign scheme.
fn split_scheme(raw: &str) -> Result<(&str, &str, &str), String> {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return Err(if raw.to_ascii_lowercase().starts_with("http") {
            "URL must start with http:// or https://".into()
        } else {
            "URL scheme must be either 'http' or 'https'".into()
        });
    };
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err("URL scheme must be either 'http' or 'https'".into());
    }
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    Ok((scheme, authority, tail))
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), String> {
    let (host, port) = if authority.starts_with('[') {
        let close = authority
            .find(']')
            .ok_or_else(|| "URL host has an unterminated IPv6 literal".to_string())?;
        let host = authority.get(..=close).unwrap_or("");
        let inner = host.get(1..host.len().saturating_sub(1)).unwrap_or("");
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return Err("URL host is not a valid IPv6 literal".into());
        }
        match authority.get(close + 1..).unwrap_or("") {
            "" => (host, None),
            p => match p.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err("URL host is followed by garbage".into()),
            },
        }
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("URL host cannot be blank".into());
    }
    if !host.starts_with('[')
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._~-".contains(&b))
    {
        return Err("URL host may contain only letters, digits, '.', '-', '_' and '~'".into());
    }
    let port = match port {
        None => None,
        Some(p) => {
            let valid = !p.is_empty()
                && p.len() <= 5
                && p.bytes().all(|b| b.is_ascii_digit())
                && !p.starts_with('0');
            match p.parse::<u16>() {
                Ok(n) if valid && n > 0 => Some(n),
                _ => {
                    return Err(format!(
                        "URL port must be a number from 1 to 65535, got '{p}'"
                    ))
                }
            }
        }
    };
    Ok((host, port))
}

/// A URL from a reply, split as lua-resty-http `parse_uri` does: default port
/// by scheme, empty path = `/`, query without `?` (empty when absent).
#[derive(Debug, PartialEq, Eq)]
pub struct ReplyUrl {
    pub scheme: String,
    pub host: String,
    pub port: String,
    pub path: String,
    pub query: String,
}

pub fn parse_reply_url(url: &str) -> Option<ReplyUrl> {
    let (scheme, authority, tail) = split_scheme(url).ok()?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = if scheme == "https" { "443" } else { "80" };
    let (host, port) = if let Some(after) = authority.strip_prefix('[') {
        let (h, p) = after.split_once(']')?;
        (
            format!("[{h}]"),
            p.strip_prefix(':').unwrap_or(default_port).to_string(),
        )
    } else {
        match authority.split_once(':') {
            Some((h, p)) => (h.to_string(), p.to_string()),
            None => (authority.to_string(), default_port.to_string()),
        }
    };
    if host.is_empty() || port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (path, query) = tail.split_once('?').unwrap_or((tail, ""));
    Some(ReplyUrl {
        scheme,
        host: host.to_ascii_lowercase(),
        port,
        path: if path.is_empty() {
            "/".into()
        } else {
            path.into()
        },
        query: query.into(),
    })
}

/// Escapes what cannot stand in a request line (Kong's `escape`): everything
/// but `! # $ & ' ( ) * + , / : ; = ? @ [ ] A-Z a-z 0-9 - _ . ~ %`.
pub fn escape_path(path: &str) -> String {
    percent_encoding::utf8_percent_encode(path, PATH_ESCAPED).to_string()
}

/// What [`escape_path`] escapes: every byte but letters, digits and
/// `! # $ & ' ( ) * + , / : ; = ? @ [ ] - _ . ~ %` (non-ASCII bytes always).
const PATH_ESCAPED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b'+')
    .remove(b',')
    .remove(b'/')
    .remove(b':')
    .remove(b';')
    .remove(b'=')
    .remove(b'?')
    .remove(b'@')
    .remove(b'[')
    .remove(b']')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'%');

/// The host of a `Host` header value, without its port (an IPv6 literal
/// keeps its brackets).
pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host
            .find(']')
            .and_then(|close| host.get(..=close))
            .unwrap_or(host);
    }
    host.split_once(':').map_or(host, |(h, _)| h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_messages_match_lua() {
        assert_eq!(
            parse_url("ftp://x").unwrap_err(),
            "URL scheme must be either 'http' or 'https'"
        );
        assert_eq!(
            parse_url("http://").unwrap_err(),
            "URL host cannot be blank"
        );
        let u = parse_url("HTTPS://PDP").unwrap();
        assert_eq!(
            (u.scheme, u.host.as_str(), u.port),
            (Scheme::Https, "pdp", 443)
        );
        assert!(parse_url("https:/paz").is_err());
        assert!(parse_url("https://u:p@paz").is_err());
        assert!(parse_url("https://paz:0").is_err());
        assert!(parse_url("https://paz:65536").is_err());
        assert!(parse_url("https://paz:").is_err());
        assert_eq!(
            parse_url("http://[::1]:9000/x").unwrap().authority(),
            "[::1]:9000"
        );
    }

    #[test]
    fn sideband_path_join() {
        let p = |u: &str| parse_url(u).unwrap().sideband_path("request");
        assert_eq!(p("https://h:8443"), "/sideband/request");
        assert_eq!(p("https://h:8443/"), "/sideband/request");
        assert_eq!(p("https://h/base"), "/base/sideband/request");
        assert_eq!(p("https://h/base/"), "/base/sideband/request");
        assert_eq!(p("https://h//x"), "//x/sideband/request");
        assert_eq!(p("https://h/base?x=1"), "/base/sideband/request?x=1");
    }

    #[test]
    fn url_crate_would_change_what_the_policy_server_sees() {
        // What `url` serialises differs from what was written; the filter
        // keeps the written host, path and query (see `parse_url`).
        let cases = [
            ("http://2130706433/x", "2130706433", "/x", ""),
            ("http://[0:0::1]/", "[0:0::1]", "/", ""),
            ("https://pdp/base/./v1/../x", "pdp", "/base/./v1/../x", ""),
            ("https://pdp/p?q='a'&r=\"b\"", "pdp", "/p", "q='a'&r=\"b\""),
        ];
        for (raw, host, path, query) in cases {
            let ours = parse_url(raw).unwrap();
            assert_eq!(
                (ours.host.as_str(), ours.path.as_str(), ours.query.as_str()),
                (host, path, query)
            );
            let theirs = ::url::Url::parse(raw).unwrap();
            let theirs_text = (
                theirs.host_str().unwrap_or_default().to_string(),
                theirs.path().to_string(),
                theirs.query().unwrap_or_default().to_string(),
            );
            assert_ne!(
                theirs_text,
                (host.to_string(), path.to_string(), query.to_string()),
                "{raw}"
            );
        }
    }

    #[test]
    fn url_crate_decides_ports_and_host_validity() {
        assert_eq!(parse_url("http://pdp:80").unwrap().port, 80);
        assert_eq!(parse_url("https://pdp").unwrap().port, 443);
        assert_eq!(
            parse_url("http://pdp:8080/").unwrap().authority(),
            "pdp:8080"
        );
        // Punycode names parse without Unicode tables (idna_adapter 1.0).
        assert_eq!(
            parse_url("https://xn--bcher-kva.example").unwrap().host,
            "xn--bcher-kva.example"
        );
        // Passes the schema's character rule, fails the URL standard.
        assert!(parse_url("http://[::1::2]/")
            .unwrap_err()
            .starts_with("URL is not valid"));
    }

    #[test]
    fn reply_urls_split_like_lua_resty_http() {
        let u = parse_reply_url("HTTPS://API.Example:8443/a%20b?x=1&y").unwrap();
        assert_eq!(
            (
                u.scheme.as_str(),
                u.host.as_str(),
                u.port.as_str(),
                u.path.as_str(),
                u.query.as_str()
            ),
            ("https", "api.example", "8443", "/a%20b", "x=1&y")
        );
        let d = parse_reply_url("http://[::1]").unwrap();
        assert_eq!(
            (d.host.as_str(), d.port.as_str(), d.path.as_str()),
            ("[::1]", "80", "/")
        );
        assert!(parse_reply_url("ftp://x/").is_none());
        assert!(parse_reply_url("http://x:y/").is_none());
    }

    #[test]
    fn paths_are_escaped_as_kong_escapes_them() {
        assert_eq!(escape_path("/a b/ü\"<>{}"), "/a%20b/%C3%BC%22%3C%3E%7B%7D");
        assert_eq!(
            escape_path("/!#$&'()*+,/:;=?@[]-_.~%41"),
            "/!#$&'()*+,/:;=?@[]-_.~%41"
        );
    }

    #[test]
    fn host_header_without_port() {
        assert_eq!(strip_port("api.example:8000"), "api.example");
        assert_eq!(strip_port("[::1]:8000"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("plain"), "plain");
    }
}
