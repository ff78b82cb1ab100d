//! nginx's single-slot headers, and how to change headers on Kong's host
//! without losing them.
//!
//! nginx keeps some headers in a field of its own (`headers_in.authorization`,
//! `headers_out.www_authenticate`, ...) besides the header list. On
//! ngx_wasm_module `a376e67` (`ngx_http_wasm_set_builtin_header_handler`,
//! tables in `ngx_http_wasm_headers_request.c` / `..._response.c`) removing
//! such a header only blanks the entry and keeps the field, so a later *add*
//! is refused (`cannot add new "<Name>" builtin ... header`) and the header is
//! lost; a *set* (replace) works. Such a header also cannot carry a second
//! value.

use crate::http::Header;
use crate::protocol::decision::HeaderOp;

/// A change to a header map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderFix {
    Remove(String),
    Add(String, String),
    Set(String, String),
}

/// Response headers with a single slot. `connection` is nginx's keep-alive
/// flag, not a header line.
const RESPONSE: &[&str] = &[
    "server",
    "date",
    "content-length",
    "content-encoding",
    "location",
    "refresh",
    "last-modified",
    "content-range",
    "accept-ranges",
    "www-authenticate",
    "expires",
    "etag",
    "e-tag",
    "content-type",
    "connection",
];

/// Request headers with a single slot (`host` has its own handling in the
/// filter: it goes to Kong's `ngx.upstream_host`).
const REQUEST: &[&str] = &[
    "host",
    "connection",
    "if-modified-since",
    "if-unmodified-since",
    "if-match",
    "if-none-match",
    "user-agent",
    "referer",
    "content-length",
    "content-type",
    "range",
    "if-range",
    "transfer-encoding",
    "expect",
    "upgrade",
    "accept-encoding",
    "via",
    "authorization",
    "keep-alive",
    "x-real-ip",
    "depth",
    "destination",
    "overwrite",
    "date",
];

fn listed(list: &[&str], name: &str) -> bool {
    list.iter().any(|n| n.eq_ignore_ascii_case(name))
}

/// Whether nginx can carry only one value of this response header.
pub fn response_single_slot(name: &str) -> bool {
    listed(RESPONSE, name)
}

/// Whether nginx can carry only one value of this request header.
pub fn request_single_slot(name: &str) -> bool {
    listed(REQUEST, name)
}

/// The warning for `count` values of a single-slot header `name` (`side`:
/// "request" or "response", `receiver`: who gets the last value).
pub fn only_once_warning(side: &str, name: &str, count: usize, receiver: &str) -> String {
    format!(
        "the policy gave {count} values for {side} header '{name}', which Kong's Wasm host can \
         send only once; the {receiver} gets the last one"
    )
}

/// The `lines` of [`request_changes`] for headers already read (lower-case
/// names).
pub fn lines_in(sent: &[Header]) -> impl Fn(&str) -> usize + '_ {
    move |name| sent.iter().filter(|h| h.name == name).count()
}

/// The host operations that apply the policy's header changes to the request
/// the host proxies itself (response hook off), given the client's headers
/// (`sent`, lower-case names), and a warning for each change the host can
/// only approximate.
///
/// The host cannot really remove a request header from a proxied request:
/// ngx_wasm_module's remove only marks nginx's list entry, the filter's map
/// then hides it, but nginx's proxy module still sends it
/// (`ngx_http_proxy_create_request` does not skip marked entries). So only
/// in-place replacements (*set*) and additions are used:
/// - a replaced header is *set* (the entry is updated where it is) and its
///   further values added;
/// - a removed header is *set* to an empty value: its line reaches the
///   upstream empty (warned), except `accept-encoding`, set to `identity`,
///   which asks the same of the upstream (no compression);
/// - a single-slot header keeps one value (the last);
/// - a header the client sent several times keeps its later lines (warned).
///
/// `lines(name)`: how many lines of the (lower-case) header the request has.
pub fn request_changes<'a>(
    ops: impl IntoIterator<Item = &'a HeaderOp>,
    lines: &dyn Fn(&str) -> usize,
) -> (Vec<HeaderFix>, Vec<String>) {
    let mut fixes = Vec::new();
    let mut warnings = Vec::new();
    for op in ops {
        let (name, values): (&str, &[String]) = match op {
            HeaderOp::Remove(n) => (n, &[]),
            HeaderOp::Set(n, v) => (n, v),
        };
        let count = lines(name);
        if count > 1 {
            warnings.push(format!(
                "request header '{name}' came {count} times: Kong's Wasm host can replace only \
                 its first line in a request it proxies, so the upstream still gets the others; \
                 enable the response hook to apply this change exactly"
            ));
        }
        match values {
            [] if count == 0 => {}
            [] if name == "accept-encoding" => {
                fixes.push(HeaderFix::Set(name.to_string(), "identity".to_string()))
            }
            [] => {
                warnings.push(format!(
                    "the policy removed request header '{name}', which Kong's Wasm host cannot \
                     remove from a request it proxies: it is sent with an empty value; enable \
                     the response hook to remove it"
                ));
                fixes.push(HeaderFix::Set(name.to_string(), String::new()));
            }
            [.., last] if request_single_slot(name) => {
                if values.len() > 1 {
                    warnings.push(only_once_warning("request", name, values.len(), "upstream"));
                }
                fixes.push(HeaderFix::Set(name.to_string(), last.clone()));
            }
            [first, rest @ ..] => {
                fixes.push(if count == 0 {
                    HeaderFix::Add(name.to_string(), first.clone())
                } else {
                    HeaderFix::Set(name.to_string(), first.clone())
                });
                fixes.extend(
                    rest.iter()
                        .map(|v| HeaderFix::Add(name.to_string(), v.clone())),
                );
            }
        }
    }
    (fixes, warnings)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_slot_lists() {
        assert!(response_single_slot("WWW-Authenticate") && response_single_slot("ETag"));
        assert!(!response_single_slot("cache-control") && !response_single_slot("set-cookie"));
        assert!(request_single_slot("Authorization") && request_single_slot("user-agent"));
        assert!(!request_single_slot("cookie") && !request_single_slot("x-forwarded-for"));
    }

    fn sent(names: &[&str]) -> Vec<Header> {
        names
            .iter()
            .map(|n| Header::new(n, b"old".to_vec()))
            .collect()
    }

    fn set(n: &str, v: &[&str]) -> HeaderOp {
        HeaderOp::Set(n.into(), v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn replacements_update_in_place_and_add_the_rest() {
        let (fixes, warnings) = request_changes(
            &[
                set("authorization", &["Bearer new"]),
                set("x-m", &["1", "2"]),
                set("x-new", &["a"]),
            ],
            &lines_in(&sent(&["authorization", "x-m"])),
        );
        assert_eq!(
            fixes,
            vec![
                HeaderFix::Set("authorization".into(), "Bearer new".into()),
                HeaderFix::Set("x-m".into(), "1".into()),
                HeaderFix::Add("x-m".into(), "2".into()),
                HeaderFix::Add("x-new".into(), "a".into()),
            ]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn removals_become_empty_values_with_a_warning_and_accept_encoding_identity() {
        let ops = [
            HeaderOp::Remove("x-user".into()),
            HeaderOp::Remove("accept-encoding".into()),
            HeaderOp::Remove("absent".into()),
        ];
        let (fixes, warnings) =
            request_changes(&ops, &lines_in(&sent(&["x-user", "accept-encoding"])));
        assert_eq!(
            fixes,
            vec![
                HeaderFix::Set("x-user".into(), String::new()),
                HeaderFix::Set("accept-encoding".into(), "identity".into()),
            ]
        );
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("'x-user'") && warnings[0].contains("empty value"));
    }

    #[test]
    fn single_slot_keeps_the_last_value_and_duplicates_are_warned() {
        let (fixes, warnings) = request_changes(
            &[set("user-agent", &["a", "b"]), set("x-d", &["n"])],
            &lines_in(&sent(&["user-agent", "x-d", "x-d"])),
        );
        assert_eq!(
            fixes,
            vec![
                HeaderFix::Set("user-agent".into(), "b".into()),
                HeaderFix::Set("x-d".into(), "n".into()),
            ]
        );
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("only once") && warnings[1].contains("2 times"));
    }
}
