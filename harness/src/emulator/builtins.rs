//! Request and response headers as the Wasm host changes them, with
//! nginx's builtin header "slots".
//!
//! nginx keeps, beside the header lists of `r->headers_in` and
//! `r->headers_out`, a pointer ("slot") to the entry of several well-known
//! headers (`authorization`, `user_agent`, `server`, `date`, `location`,
//! ...). The host's handler tables (`ngx_http_wasm_req_headers_handlers`,
//! ngx_http_wasm_headers_request.c; `ngx_http_wasm_resp_headers_handlers`,
//! ngx_http_wasm_headers_response.c) route those names to handlers that
//! work through the slot (`ngx_http_wasm_set_builtin_header_handler`,
//! ngx_http_wasm_headers.c):
//!
//! - with no slot yet, "set" and "add" go through the list helper and the
//!   slot then points at the entry found or created;
//! - "remove" only blanks the slot's entry (nginx clears its hash): the slot
//!   stays; with no slot, "remove" does nothing at all, even if the list has
//!   such a header;
//! - "add" while the slot exists, blank or not, fails: the host logs
//!   `cannot add new "<Name>" builtin request|response header` and still
//!   returns `Ok` to the filter (ngx_proxy_wasm_maps_set turns the refusal
//!   into OK);
//! - "set" while the slot exists revives its entry in place with the new
//!   value.
//!
//! A blanked entry is gone from the filter's map and, for a response, from
//! what the client gets; a blanked request entry is still sent upstream by
//! nginx's proxy module (see `headers.rs`).
//!
//! Request slots come from nginx's parser (`ngx_http_headers_in`): the
//! first client header of each known name. Request names with their own
//! handler: `Host` (also sets `headers_in.server`), `Connection` (a value
//! with `close` / `keep-alive` changes `r->keepalive`), `User-Agent`
//! (browser flags), `Content-Length` (parsed; refusals are logged as an
//! invalid value too); `X-Forwarded-For` and `Cookie` follow the list
//! rules.
//!
//! Response names with their own handler: `Location` nulls the slot again
//! when the value starts with `/` (so a relative Location is never
//! removable and every "add" appends one more), `Last-Modified` and
//! `Content-Length` null the slot on "remove" (so they can be added again
//! afterwards), `Content-Length` is parsed, `Content-Type` is kept outside
//! the list, `Cache-Control` and `Link` follow the list's rules, and
//! `Connection` only changes the keep-alive flag. The names the tables know
//! are written with the table's spelling.
//!
//! The list helper (`ngx_http_wasm_set_header_helper`) has its own quirk:
//! "set" on a name with two or more entries blanks all of them and adds
//! nothing (after blanking a duplicate it scans the list again, and the
//! entry it just updated now counts as a duplicate too); the first one
//! keeps the new name and value, the others their old ones.
//!
//! Response slots are created by the host when a local response is flushed
//! (its headers are applied with "set"), by
//! `ngx_http_wasm_produce_resp_headers` (`Server`, `Date`) before
//! `on_http_response_headers`, by Kong's header filter (`Server`), and, for
//! a proxied response, by nginx's upstream module for the headers of its
//! `ngx_http_upstream_headers_in` table.

use super::api::LogLevel;
use super::headers::{escape_name, escape_value, HeaderList, MapOp};
use super::state::{Response, Stream};

/// How the host handles one response header name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Handler {
    /// `ngx_http_wasm_set_builtin_header_handler`: one slot.
    Single,
    /// `ngx_http_set_location_header_handler`.
    Location,
    /// `ngx_http_set_last_modified_header_handler`.
    LastModified,
    /// `ngx_http_set_content_length_header_handler`.
    ContentLength,
    /// `ngx_http_set_content_type_header_handler`.
    ContentType,
    /// `ngx_http_wasm_set_builtin_multi_header_handler` (list rules).
    Multi,
    /// `ngx_http_wasm_set_connection_header_handler`.
    Connection,
}

/// The host's table: name, nginx slot, handler. `E-Tag` and `ETag` share
/// the `etag` slot. Other names follow the list rules
/// (`ngx_http_wasm_set_header_handler`).
const RESP_HANDLERS: [(&str, &str, Handler); 17] = [
    ("Server", "server", Handler::Single),
    ("Date", "date", Handler::Single),
    ("Content-Length", "content_length", Handler::ContentLength),
    ("Content-Encoding", "content_encoding", Handler::Single),
    ("Location", "location", Handler::Location),
    ("Refresh", "refresh", Handler::Single),
    ("Last-Modified", "last_modified", Handler::LastModified),
    ("Content-Range", "content_range", Handler::Single),
    ("Accept-Ranges", "accept_ranges", Handler::Single),
    ("WWW-Authenticate", "www_authenticate", Handler::Single),
    ("Expires", "expires", Handler::Single),
    ("E-Tag", "etag", Handler::Single),
    ("ETag", "etag", Handler::Single),
    ("Content-Type", "content_type", Handler::ContentType),
    ("Cache-Control", "cache_control", Handler::Multi),
    ("Link", "link", Handler::Multi),
    ("Connection", "", Handler::Connection),
];

/// Upstream headers nginx's upstream module points a slot at when it copies
/// them (`ngx_http_upstream_headers_in`): the last one copied wins.
/// `WWW-Authenticate` is copied without a slot; `Location` gets its slot
/// only when absolute (`ngx_http_upstream_rewrite_location`, no
/// `proxy_redirect`). `Content-Length` is not copied by nginx at all (its
/// header filter writes it from `content_length_n`); the emulator keeps the
/// upstream's line in the list, so it gets its slot too.
const UPSTREAM_SLOTS: [(&str, &str); 11] = [
    ("Date", "date"),
    ("ETag", "etag"),
    ("Server", "server"),
    ("Expires", "expires"),
    ("Accept-Ranges", "accept_ranges"),
    ("Content-Range", "content_range"),
    ("Content-Encoding", "content_encoding"),
    ("Last-Modified", "last_modified"),
    ("Refresh", "refresh"),
    ("Content-Length", "content_length"),
    ("Location", "location"),
];

/// Which list a handler works on; it names the list in the host's log lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Request,
    Response,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Request => "request",
            Kind::Response => "response",
        }
    }
}

/// How the host handles one request header name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ReqHandler {
    /// `ngx_http_wasm_set_builtin_header_handler`: one slot.
    Single,
    /// `ngx_http_wasm_set_host_header_handler`: the slot, then
    /// `headers_in.server` (not used by the emulator).
    Host,
    /// `ngx_http_wasm_set_connection_header_handler`: the slot, then
    /// `r->keepalive`.
    Connection,
    /// `ngx_http_wasm_set_ua_header_handler`: the slot, then browser flags
    /// (nothing the emulator uses).
    UserAgent,
    /// `ngx_http_wasm_set_cl_header_handler`: parsed, then the slot.
    ContentLength,
    /// `ngx_http_wasm_set_builtin_multi_header_handler` (list rules).
    Multi,
}

/// The host's request table: name, `headers_in` slot, handler. Other
/// names follow the list rules (`ngx_http_wasm_set_header_handler`).
/// `Accept-Encoding`/`Via` (gzip), `X-Forwarded-For`, `X-Real-IP` (realip)
/// and `Depth`/`Destination`/`Overwrite`/`Date` (dav) are in the table only
/// when nginx is built with those modules; nginx's own parser table has the
/// same conditions, so both agree on a given build.
const REQ_HANDLERS: [(&str, &str, ReqHandler); 26] = [
    ("Host", "host", ReqHandler::Host),
    ("Connection", "connection", ReqHandler::Connection),
    ("If-Modified-Since", "if_modified_since", ReqHandler::Single),
    (
        "If-Unmodified-Since",
        "if_unmodified_since",
        ReqHandler::Single,
    ),
    ("If-Match", "if_match", ReqHandler::Single),
    ("If-None-Match", "if_none_match", ReqHandler::Single),
    ("User-Agent", "user_agent", ReqHandler::UserAgent),
    ("Referer", "referer", ReqHandler::Single),
    (
        "Content-Length",
        "content_length",
        ReqHandler::ContentLength,
    ),
    ("Content-Type", "content_type", ReqHandler::Single),
    ("Range", "range", ReqHandler::Single),
    ("If-Range", "if_range", ReqHandler::Single),
    ("Transfer-Encoding", "transfer_encoding", ReqHandler::Single),
    ("Expect", "expect", ReqHandler::Single),
    ("Upgrade", "upgrade", ReqHandler::Single),
    ("Accept-Encoding", "accept_encoding", ReqHandler::Single),
    ("Via", "via", ReqHandler::Single),
    ("Authorization", "authorization", ReqHandler::Single),
    ("Keep-Alive", "keep_alive", ReqHandler::Single),
    ("X-Forwarded-For", "", ReqHandler::Multi),
    ("X-Real-IP", "x_real_ip", ReqHandler::Single),
    ("Depth", "depth", ReqHandler::Single),
    ("Destination", "destination", ReqHandler::Single),
    ("Overwrite", "overwrite", ReqHandler::Single),
    ("Date", "date", ReqHandler::Single),
    ("Cookie", "", ReqHandler::Multi),
];

fn lookup_request(key: &[u8]) -> Option<(&'static str, &'static str, ReqHandler)> {
    REQ_HANDLERS
        .iter()
        .find(|(name, _, _)| name.as_bytes().eq_ignore_ascii_case(key))
        .copied()
}

/// nginx's parser (`ngx_http_process_request_headers` with the
/// `ngx_http_headers_in` handlers) points each slot at the first client
/// header of its name. Only the slots the Wasm host's table uses are kept.
pub(crate) fn slot_client_request_headers(headers: &mut HeaderList) {
    let mut i = 0;
    while let Some(h) = headers.entry(i) {
        let slot = lookup_request(&h.name)
            .map(|(_, slot, _)| slot)
            .filter(|slot| !slot.is_empty());
        if let Some(slot) = slot {
            if headers.slot(slot).is_none() {
                headers.set_slot(slot, Some(i));
            }
        }
        i += 1;
    }
}

/// `ngx_strcasestrn(value, word, len - 1)` as the request `Connection`
/// handler calls it (with the word's length): a case-insensitive substring.
fn has_word(value: &[u8], word: &[u8]) -> bool {
    value
        .windows(word.len())
        .any(|w| w.eq_ignore_ascii_case(word))
}

/// A filter changes a request header: `ngx_http_wasm_set_req_header`.
/// `value` is ignored for a remove. The host's log lines come back as
/// notes; the filter gets `Ok` whatever they say.
pub(crate) fn set_request_header(
    stream: &mut Stream,
    key: &[u8],
    value: &[u8],
    op: MapOp,
) -> Vec<Note> {
    request_header(
        &mut stream.req.headers,
        &mut stream.resp.keepalive,
        key,
        value,
        op,
    )
}

/// [`set_request_header`] on the list; `keepalive` is `r->keepalive`.
fn request_header(
    headers: &mut HeaderList,
    keepalive: &mut bool,
    key: &[u8],
    value: &[u8],
    op: MapOp,
) -> Vec<Note> {
    let key = escape_name(key);
    let value = if op == MapOp::Remove {
        Vec::new()
    } else {
        escape_value(value)
    };
    let Some((name, slot, handler)) = lookup_request(&key) else {
        list_helper(headers, op, &key, &value);
        return Vec::new();
    };
    let name = name.as_bytes();
    let kind = Kind::Request;
    match handler {
        ReqHandler::Multi => {
            list_helper(headers, op, name, &value);
            Vec::new()
        }
        ReqHandler::Single | ReqHandler::Host | ReqHandler::UserAgent => {
            single(headers, slot, op, name, &value, kind)
                .into_iter()
                .collect()
        }
        ReqHandler::Connection => {
            let note = single(headers, slot, op, name, &value, kind);
            if note.is_none() {
                // r->keepalive, the flag the response is sent with.
                if has_word(&value, b"close") {
                    *keepalive = false;
                } else if has_word(&value, b"keep-alive") {
                    *keepalive = true;
                }
            }
            note.into_iter().collect()
        }
        ReqHandler::ContentLength => {
            let invalid = || {
                Note::Log(
                    LogLevel::Error,
                    format!(
                        "attempt to set invalid Content-Length request header: \"{}\"",
                        String::from_utf8_lossy(&value)
                    ),
                )
            };
            // ngx_atoof: digits only, no overflow. An empty value is a
            // remove (or a set, which the handler treats alike); an empty
            // add is refused.
            let valid = if value.is_empty() {
                op != MapOp::Add
            } else {
                value.iter().all(u8::is_ascii_digit)
                    && std::str::from_utf8(&value)
                        .ok()
                        .and_then(|v| v.parse::<i64>().ok())
                        .is_some()
            };
            if !valid {
                return vec![invalid()];
            }
            match single(headers, slot, op, name, &value, kind) {
                // A refused add goes through the handler's error exit, which
                // logs the value as invalid too.
                Some(note) => vec![note, invalid()],
                None => Vec::new(),
            }
        }
    }
}

/// `proxy_set_header_map_pairs` on the request map first removes every
/// header of the list through the handlers
/// (`ngx_http_wasm_clear_req_headers`): every entry is blanked but stays in
/// the list (and is still sent upstream); of a builtin name only the slot's
/// entry is blanked, so a second client `Via` or `Referer` survives.
pub(crate) fn clear_request_headers(stream: &mut Stream) -> Vec<Note> {
    clear_request_list(&mut stream.req.headers, &mut stream.resp.keepalive)
}

fn clear_request_list(headers: &mut HeaderList, keepalive: &mut bool) -> Vec<Note> {
    let mut notes = Vec::new();
    let mut i = 0;
    while let Some(h) = headers.entry(i) {
        if h.active {
            let name = h.name.clone();
            notes.extend(request_header(
                headers,
                keepalive,
                &name,
                b"",
                MapOp::Remove,
            ));
        }
        i += 1;
    }
    notes
}

/// What the host does besides changing the headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Note {
    /// A line in the error log (the filter still gets `Ok`).
    Log(LogLevel, String),
    /// The worker process crashes (an emulated host fault).
    Fault(String),
}

fn error(message: String) -> Option<Note> {
    Some(Note::Log(LogLevel::Error, message))
}

fn lookup(key: &[u8]) -> Option<(&'static str, &'static str, Handler)> {
    RESP_HANDLERS
        .iter()
        .find(|(name, _, _)| name.as_bytes().eq_ignore_ascii_case(key))
        .copied()
}

/// A filter (or the host on its behalf) changes a response header:
/// `ngx_http_wasm_set_resp_header`. `value` is ignored for a remove.
pub(crate) fn set_response_header(
    resp: &mut Response,
    key: &[u8],
    value: &[u8],
    op: MapOp,
) -> Option<Note> {
    let key = escape_name(key);
    let value = if op == MapOp::Remove {
        Vec::new()
    } else {
        escape_value(value)
    };
    let Some((name, slot, handler)) = lookup(&key) else {
        list_helper(&mut resp.headers, op, &key, &value);
        return None;
    };
    let name = name.as_bytes();
    let headers = &mut resp.headers;
    match handler {
        Handler::Multi => {
            list_helper(headers, op, name, &value);
            None
        }
        Handler::Single => single(headers, slot, op, name, &value, Kind::Response),
        Handler::Location => {
            let note = single(headers, slot, op, name, &value, Kind::Response);
            if note.is_none() {
                let relative = headers
                    .slot(slot)
                    .and_then(|i| headers.entry(i))
                    .is_some_and(|h| h.value.first() == Some(&b'/'));
                if relative {
                    // Kept out of the slot so that nginx's header filter does
                    // not turn it into an absolute redirect.
                    headers.set_slot(slot, None);
                }
            }
            note
        }
        Handler::LastModified => {
            if op == MapOp::Remove {
                clear_slot(headers, slot);
                return None;
            }
            single(headers, slot, op, name, &value, Kind::Response)
        }
        Handler::ContentLength => {
            if op == MapOp::Remove {
                clear_slot(headers, slot);
                resp.content_length_n = -1;
                return None;
            }
            let parsed = std::str::from_utf8(&value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<i64>().ok());
            let Some(len) = parsed else {
                return error(format!(
                    "attempt to set invalid Content-Length response header: \"{}\"",
                    String::from_utf8_lossy(&value)
                ));
            };
            let note = single(headers, slot, op, name, &value, Kind::Response);
            if note.is_none() {
                resp.content_length_n = len;
            }
            note
        }
        Handler::ContentType => {
            resp.content_type = (op != MapOp::Remove).then_some(value);
            None
        }
        Handler::Connection => connection(resp, op, &value),
    }
}

/// `ngx_http_wasm_set_builtin_header_handler`.
fn single(
    headers: &mut HeaderList,
    slot: &'static str,
    op: MapOp,
    name: &[u8],
    value: &[u8],
    kind: Kind,
) -> Option<Note> {
    match (headers.slot(slot), op) {
        (None, MapOp::Remove) => None,
        (None, _) => {
            let entry = list_helper(headers, op, name, value);
            headers.set_slot(slot, entry);
            None
        }
        (Some(i), MapOp::Remove) => {
            headers.blank(i);
            None
        }
        (Some(_), MapOp::Add) => error(format!(
            "cannot add new \"{}\" builtin {} header",
            String::from_utf8_lossy(name),
            kind.as_str()
        )),
        (Some(i), MapOp::Set) => {
            headers.revive(i, name, value);
            None
        }
    }
}

/// `ngx_http_clear_last_modified` / `ngx_http_clear_content_length`: blank
/// the slot's entry and null the slot.
fn clear_slot(headers: &mut HeaderList, slot: &'static str) {
    if let Some(i) = headers.slot(slot) {
        headers.blank(i);
        headers.set_slot(slot, None);
    }
}

/// `ngx_http_wasm_set_header_helper`: the list rules. "add" appends; "remove"
/// blanks every match; "set" updates the first match, or blanks every match
/// when there are several, or appends when there is none. Returns the entry
/// a slot would point to afterwards (`None` after blanking).
pub(crate) fn list_helper(
    headers: &mut HeaderList,
    op: MapOp,
    name: &[u8],
    value: &[u8],
) -> Option<usize> {
    if op == MapOp::Add {
        return Some(headers.push_raw(name, value));
    }
    let mut out = None;
    let mut found = false;
    let mut from = 0;
    while let Some(i) = headers.find_from(from, name) {
        if op == MapOp::Remove || found {
            headers.blank(i);
            out = None;
            found = true;
            // The host scans the list again from its start.
            from = 0;
            continue;
        }
        headers.revive(i, name, value);
        out = Some(i);
        found = true;
        from = i + 1;
    }
    if found || op == MapOp::Remove {
        return out;
    }
    Some(headers.push_raw(name, value))
}

/// `ngx_http_wasm_set_connection_header_handler`: only `r->keepalive` (or the
/// status, for `upgrade`) changes; nothing goes into the list.
fn connection(resp: &mut Response, op: MapOp, value: &[u8]) -> Option<Note> {
    if op == MapOp::Remove {
        // A remove hands the handler the empty string, whose data pointer is
        // NULL, and the handler searches it right away.
        return Some(Note::Fault(
            "removing the Connection response header: ngx_http_wasm_set_connection_header_handler \
             searches the removal's empty value, a NULL pointer (ngx_strcasestrn)"
                .to_string(),
        ));
    }
    if value_has(value, b"keep-alive") {
        resp.keepalive = true;
        None
    } else if value_has(value, b"close") {
        resp.keepalive = false;
        None
    } else if value_has(value, b"upgrade") {
        resp.status = 101;
        Some(Note::Log(
            LogLevel::Info,
            "setting \"Connection: upgrade\" response header, switching status code: 101"
                .to_string(),
        ))
    } else {
        error(format!(
            "attempt to set invalid Connection response header: \"{}\"",
            String::from_utf8_lossy(value)
        ))
    }
}

/// The handler's test for a Connection token: `ngx_strcasestrn(value, word,
/// value_len - 1)`. The length passed is the value's, not the word's minus
/// one, so a word matches only where it ends the value (`close`,
/// `Keep-Alive`, `foo, close`), or when the whole value is a beginning of
/// the word; `keep-alive, foo` is invalid.
fn value_has(value: &[u8], word: &[u8]) -> bool {
    // Both strings are NUL-terminated in the host.
    let at = |s: &[u8], i: usize| s.get(i).copied().unwrap_or(0).to_ascii_lowercase();
    let n = value.len().wrapping_sub(1);
    let first = at(word, 0);
    let rest = word.get(1..).unwrap_or_default();
    let mut i = 0;
    loop {
        let c = at(value, i);
        i += 1;
        if c == 0 {
            return false;
        }
        if c != first {
            continue;
        }
        // ngx_strncasecmp(value + i, word + 1, n)
        let tail = value.get(i..).unwrap_or_default();
        let mut k = 0;
        let equal = loop {
            if k == n {
                break true;
            }
            let (a, b) = (at(tail, k), at(rest, k));
            if a != b {
                break false;
            }
            if a == 0 {
                break true;
            }
            k += 1;
        };
        if equal {
            return true;
        }
    }
}

/// `proxy_set_header_map_pairs` first removes every header of the list,
/// one by one through the handlers (`ngx_http_wasm_clear_headers_helper`):
/// a builtin is only blanked through its slot, so one without a slot (a
/// relative `Location`) survives.
pub(crate) fn clear_response_headers(resp: &mut Response) -> Option<Note> {
    let mut i = 0;
    while let Some(h) = resp.headers.entry(i) {
        if h.active {
            let name = h.name.clone();
            if let Some(note) = set_response_header(resp, &name, b"", MapOp::Remove) {
                return Some(note);
            }
        }
        i += 1;
    }
    None
}

/// `ngx_http_wasm_produce_resp_headers`, before `on_http_response_headers`:
/// `Server` and `Date` are set (creating their slots) unless a slot exists.
pub(crate) fn produce_default_headers(resp: &mut Response, server: &[u8], date: &[u8]) {
    for (name, slot, value) in [("Server", "server", server), ("Date", "date", date)] {
        if resp.headers.slot(slot).is_none() {
            let _ = set_response_header(resp, name.as_bytes(), value, MapOp::Set);
        }
    }
}

/// Kong's header filter sets `Server` through `ngx.header`, which points
/// the slot at it too (lua-nginx-module's builtin header handler).
pub(crate) fn kong_server_header(resp: &mut Response, server: &[u8]) {
    if resp.headers.slot("server").is_none() && !resp.headers.contains(b"server") {
        let i = resp.headers.push_raw(b"Server", server);
        resp.headers.set_slot("server", Some(i));
    }
}

/// nginx's upstream module copies one header of a proxied response into the
/// list, pointing a slot at it for the names it knows.
pub(crate) fn copy_upstream_header(headers: &mut HeaderList, name: &[u8], value: &[u8]) {
    let i = headers.push_raw(name, value);
    let slot = UPSTREAM_SLOTS
        .iter()
        .find(|(n, _)| n.as_bytes().eq_ignore_ascii_case(name))
        .map(|(_, slot)| *slot);
    match slot {
        Some("location") if value.first() == Some(&b'/') => {}
        Some(slot) => headers.set_slot(slot, Some(i)),
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp() -> Response {
        Response {
            content_length_n: -1,
            keepalive: true,
            ..Response::default()
        }
    }

    fn active(r: &Response) -> Vec<(String, String)> {
        r.headers
            .iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn builtin_slot_survives_remove() {
        let mut r = resp();
        assert_eq!(
            set_response_header(&mut r, b"date", b"d1", MapOp::Set),
            None
        );
        assert_eq!(active(&r), vec![("Date".into(), "d1".into())]);
        assert_eq!(
            set_response_header(&mut r, b"Date", b"", MapOp::Remove),
            None
        );
        assert!(active(&r).is_empty());
        let note = set_response_header(&mut r, b"Date", b"d2", MapOp::Add);
        assert_eq!(
            note,
            error("cannot add new \"Date\" builtin response header".into())
        );
        assert!(active(&r).is_empty());
        assert_eq!(
            set_response_header(&mut r, b"Date", b"d3", MapOp::Set),
            None
        );
        assert_eq!(active(&r), vec![("Date".into(), "d3".into())]);
    }

    #[test]
    fn relative_location_has_no_slot() {
        let mut r = resp();
        set_response_header(&mut r, b"Location", b"/a", MapOp::Set);
        set_response_header(&mut r, b"Location", b"", MapOp::Remove);
        set_response_header(&mut r, b"Location", b"/a", MapOp::Add);
        assert_eq!(active(&r).len(), 2);
        // An absolute one keeps its slot.
        let mut r = resp();
        set_response_header(&mut r, b"Location", b"http://x/", MapOp::Set);
        set_response_header(&mut r, b"Location", b"", MapOp::Remove);
        assert!(set_response_header(&mut r, b"Location", b"http://y/", MapOp::Add).is_some());
        assert!(active(&r).is_empty());
    }

    #[test]
    fn content_length_and_last_modified_null_their_slot_on_remove() {
        let mut r = resp();
        set_response_header(&mut r, b"Content-Length", b"5", MapOp::Set);
        assert_eq!(r.content_length_n, 5);
        set_response_header(&mut r, b"content-length", b"", MapOp::Remove);
        assert_eq!(r.content_length_n, -1);
        assert_eq!(
            set_response_header(&mut r, b"Content-Length", b"7", MapOp::Add),
            None
        );
        assert_eq!(r.content_length_n, 7);
        set_response_header(&mut r, b"Last-Modified", b"x", MapOp::Set);
        set_response_header(&mut r, b"Last-Modified", b"", MapOp::Remove);
        assert_eq!(
            set_response_header(&mut r, b"Last-Modified", b"y", MapOp::Add),
            None
        );
        assert_eq!(
            active(&r),
            vec![
                ("Content-Length".into(), "7".into()),
                ("Last-Modified".into(), "y".into())
            ]
        );
    }

    #[test]
    fn set_with_two_values_blanks_both() {
        let mut r = resp();
        set_response_header(&mut r, b"X-A", b"1", MapOp::Add);
        set_response_header(&mut r, b"X-A", b"2", MapOp::Add);
        set_response_header(&mut r, b"X-A", b"3", MapOp::Set);
        assert!(active(&r).is_empty());
        set_response_header(&mut r, b"X-A", b"4", MapOp::Set);
        assert_eq!(active(&r), vec![("X-A".into(), "4".into())]);
    }

    fn req(headers: &[(&str, &str)]) -> HeaderList {
        let mut l = HeaderList::new();
        for (n, v) in headers {
            l.push_raw(n.as_bytes(), v.as_bytes());
        }
        slot_client_request_headers(&mut l);
        l
    }

    fn all(l: &HeaderList) -> Vec<(String, String)> {
        l.iter_all()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn request_builtin_keeps_its_slot_after_remove() {
        let mut l = req(&[("authorization", "old"), ("X-A", "1")]);
        let mut ka = true;
        let op = |l: &mut HeaderList, ka: &mut bool, k: &str, v: &str, op| {
            request_header(l, ka, k.as_bytes(), v.as_bytes(), op)
        };
        assert!(op(&mut l, &mut ka, "Authorization", "", MapOp::Remove).is_empty());
        assert_eq!(l.len(), 1);
        let notes = op(&mut l, &mut ka, "authorization", "new", MapOp::Add);
        assert_eq!(
            notes,
            vec![Note::Log(
                LogLevel::Error,
                "cannot add new \"Authorization\" builtin request header".into()
            )]
        );
        assert!(op(&mut l, &mut ka, "AUTHORIZATION", "new", MapOp::Set).is_empty());
        // Revived in place, with the table's spelling.
        assert_eq!(
            all(&l),
            vec![
                ("Authorization".into(), "new".into()),
                ("X-A".into(), "1".into())
            ]
        );
        // Without a client header, the first add creates the slot.
        let mut l = req(&[]);
        assert!(op(&mut l, &mut ka, "user-agent", "a", MapOp::Add).is_empty());
        assert_eq!(op(&mut l, &mut ka, "User-Agent", "b", MapOp::Add).len(), 1);
        assert_eq!(all(&l), vec![("User-Agent".into(), "a".into())]);
    }

    #[test]
    fn request_content_length_handler_logs_refusals_as_invalid_values() {
        let mut l = req(&[("Content-Length", "5")]);
        let mut ka = true;
        let notes = request_header(&mut l, &mut ka, b"Content-Length", b"7", MapOp::Add);
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert_eq!(
            notes.get(1),
            Some(&Note::Log(
                LogLevel::Error,
                "attempt to set invalid Content-Length request header: \"7\"".into()
            ))
        );
        let notes = request_header(&mut l, &mut ka, b"Content-Length", b"1x", MapOp::Set);
        assert_eq!(notes.len(), 1);
        assert_eq!(all(&l), vec![("Content-Length".into(), "5".into())]);
        assert!(request_header(&mut l, &mut ka, b"Content-Length", b"", MapOp::Set).is_empty());
        assert_eq!(all(&l), vec![("Content-Length".into(), "".into())]);
    }

    #[test]
    fn request_connection_changes_keepalive_and_multi_headers_follow_the_list() {
        let mut l = req(&[("Connection", "keep-alive"), ("Cookie", "a=1")]);
        let mut ka = true;
        request_header(&mut l, &mut ka, b"connection", b"Close", MapOp::Set);
        assert!(!ka);
        request_header(&mut l, &mut ka, b"connection", b"", MapOp::Remove);
        assert!(!ka);
        request_header(&mut l, &mut ka, b"Connection", b"x, Keep-Alive", MapOp::Set);
        assert!(ka);
        // Cookie: add appends, remove blanks every entry.
        assert!(request_header(&mut l, &mut ka, b"cookie", b"b=2", MapOp::Add).is_empty());
        assert_eq!(l.get_all(b"cookie").len(), 2);
        request_header(&mut l, &mut ka, b"Cookie", b"", MapOp::Remove);
        assert!(l.get_all(b"cookie").is_empty());
        assert_eq!(l.iter_all().count(), 3);
    }

    #[test]
    fn clearing_request_headers_leaves_a_second_builtin_value() {
        let mut l = req(&[("Via", "1"), ("X-A", "a"), ("Via", "2")]);
        let mut ka = true;
        assert!(clear_request_list(&mut l, &mut ka).is_empty());
        assert_eq!(l.iter().collect::<Vec<_>>(), vec![(&b"Via"[..], &b"2"[..])]);
    }

    #[test]
    fn connection_tokens_match_like_the_host() {
        assert!(value_has(b"close", b"close"));
        assert!(value_has(b"Keep-Alive", b"keep-alive"));
        assert!(value_has(b"foo, close", b"close"));
        assert!(!value_has(b"keep-alive, foo", b"keep-alive"));
        assert!(!value_has(b"", b"close"));
        assert!(value_has(b"clo", b"close"));
    }
}
