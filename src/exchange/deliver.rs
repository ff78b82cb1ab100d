//! Local replies delivered exactly on Kong's host (the plan is
//! `crate::local_reply`): the reply handed to `send_response`, its header
//! fix-ups in the response headers step, its body cut in the body step.

use super::forward::change_header;
use crate::host::{Host, Map};
use crate::http::Reply;
use crate::local_reply::{BodyCut, ChunkAction, Plan};

/// A local reply on its way to the client.
pub struct Delivery {
    plan: Plan,
    cut: BodyCut,
}

impl Delivery {
    pub fn send(h: &mut dyn Host, reply: &Reply) -> Delivery {
        let plan = Plan::new(reply);
        let headers: Vec<(&str, &str)> = reply
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_str()))
            .collect();
        let body = reply.body.get(..plan.send_len).filter(|b| !b.is_empty());
        h.send_response(reply.status, &headers, body);
        let cut = BodyCut::new(&plan);
        Delivery { plan, cut }
    }

    /// Replaces an upstream response the host started before a decision
    /// (its headers are in the response map now, its body still to come).
    pub fn replace_upstream_response(h: &mut dyn Host, reply: &Reply) -> Delivery {
        // Not `connection`: the host's handler for it reads the value a
        // remove does not have (ngx_http_wasm_set_connection_header_handler)
        // and crashes the worker; it is set to `close` below.
        let names: Vec<String> = h
            .header_map(Map::ResponseHeaders)
            .iter()
            .map(|(n, _)| n)
            .filter(|n| !n.starts_with(':') && !n.eq_ignore_ascii_case("connection"))
            .map(str::to_string)
            .collect();
        for n in names {
            h.set_header(Map::ResponseHeaders, &n, None);
        }
        let mut delivery = Delivery::send(h, reply);
        h.set_header(Map::ResponseHeaders, "content-length", Some("0"));
        // The upstream's body still comes and must be dropped, which empties
        // the host's buffers: safe only if nginx does not reuse this
        // connection (see `local_reply`).
        h.set_header(Map::ResponseHeaders, "connection", Some("close"));
        delivery.cut = BodyCut::discard();
        delivery
    }

    /// The response headers step of a local reply.
    pub fn fix_headers(&self, h: &mut dyn Host) {
        for w in &self.plan.warnings {
            log::warn!("{w}");
        }
        for fix in &self.plan.header_fixes {
            change_header(h, Map::ResponseHeaders, fix);
        }
    }

    /// One response body chunk of a local reply.
    pub fn on_chunk(&mut self, h: &mut dyn Host, size: usize) {
        match self.cut.on_chunk(size) {
            ChunkAction::Keep => {}
            ChunkAction::CutFrom(at) => h.cut_response_body(at, size - at),
            ChunkAction::Empty => h.cut_response_body(0, size),
            ChunkAction::CannotCut => log::error!(
                "the host handed over the local reply's final newline as a chunk of its own; \
                 it is left in place (cutting it would corrupt the worker's memory)"
            ),
        }
    }
}
