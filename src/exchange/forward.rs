//! An allow with the response hook off: the directives are applied to the
//! request the host proxies. Inside Kong the upstream path, query and Host
//! are Kong's `ngx.upstream_uri` / `ngx.upstream_host`; elsewhere they are
//! the request's `:path` and `Host`.

use crate::failure::policy::Class;
use crate::failure::Failure;
use crate::host::{Host, Map};
use crate::protocol::decision::{Directives, HeaderOp};
use crate::slots::{self, HeaderFix};
use crate::upstream;

/// Applies `d` to the proxied request. A body change cannot be applied on
/// this host (the body step has passed when the reply arrives).
/// `lines(name)`: how many lines of a header the request had when the
/// decision was taken (for a cached decision, the current request's), which
/// says whether a header is set or added ([`slots::request_changes`]).
pub fn apply(
    h: &mut dyn Host,
    lines: &dyn Fn(&str) -> usize,
    d: &Directives,
) -> Result<(), Failure> {
    if d.body.is_some() {
        return Err(Failure::BodyChangeUnsupported);
    }
    let ops = d
        .header_ops
        .iter()
        .filter(|op| !matches!(op, HeaderOp::Remove(n) | HeaderOp::Set(n, _) if n == "host"));
    let (fixes, warnings) = slots::request_changes(ops, lines);
    for w in &warnings {
        log::warn!("{w}");
    }
    for fix in &fixes {
        change_header(h, Map::RequestHeaders, fix);
    }
    if let Some(m) = &d.method {
        h.set_header(Map::RequestHeaders, ":method", Some(m));
    }
    if d.path.is_none() && d.query.is_none() && d.host.is_none() {
        return Ok(());
    }
    let kong_uri = h.property(&["ngx", "upstream_uri"]);
    if d.path.is_some() || d.query.is_some() {
        match &kong_uri {
            Some(uri) => {
                let (new_uri, _) = upstream::rewrite(&String::from_utf8_lossy(uri), "", d);
                if !h.set_property(&["ngx", "upstream_uri"], new_uri.as_bytes()) {
                    return Err(Failure::Host {
                        what: "cannot set ngx.upstream_uri".into(),
                    });
                }
            }
            None => {
                let current = h
                    .header_map(Map::RequestHeaders)
                    .text(":path")
                    .unwrap_or_default();
                let (new_path, _) = upstream::rewrite(&current, "", d);
                h.set_header(Map::RequestHeaders, ":path", Some(&new_path));
            }
        }
    }
    if let Some(host) = &d.host {
        if kong_uri.is_none() {
            h.set_header(Map::RequestHeaders, "host", Some(host));
        } else if !h.set_property(&["ngx", "upstream_host"], host.as_bytes()) {
            return Err(Failure::Host {
                what: "cannot set ngx.upstream_host".into(),
            });
        }
    }
    Ok(())
}

/// The failure policy's marker on a request the host proxies: a request let
/// through carries its class; a client's own header of that name is blanked
/// (the host cannot remove a header from a request it proxies, see `slots`).
pub fn mark(h: &mut dyn Host, name: &str, client_lines: usize, class: Option<Class>) {
    let value = class.map_or("", Class::name);
    match client_lines {
        0 if class.is_some() => h.add_header(Map::RequestHeaders, name, value),
        0 => return,
        _ => h.set_header(Map::RequestHeaders, name, Some(value)),
    }
    if client_lines > 0 {
        log::warn!(
            "the client sent its own '{name}' header ({client_lines} line(s)); the upstream gets \
             the filter's value in its first line (Kong's Wasm host cannot remove the header \
             from a request it proxies); enable the response hook to remove it"
        );
    }
}

/// One header change.
pub fn change_header(h: &mut dyn Host, map: Map, fix: &HeaderFix) {
    match fix {
        HeaderFix::Remove(n) => h.set_header(map, n, None),
        HeaderFix::Set(n, v) => h.set_header(map, n, Some(v)),
        HeaderFix::Add(n, v) => h.add_header(map, n, v),
    }
}
