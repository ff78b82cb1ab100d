//! The response side: Kong's header filter, the Wasm header filter
//! (`on_http_response_headers`), the body filter (`on_http_response_body`)
//! and response body buffering.

use super::finish::client_headers;
use super::Host;
use crate::emulator::state::{Action, Buf, BufTag, Chunk, Phase, Stage, Step};
use crate::emulator::{builtins, faults, kong};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

impl Host {
    /// Kong's header filter (before the Wasm filters' `on_http_response_headers`).
    pub(super) fn kong_header_filter(&mut self, sid: u64) {
        let version = self.ctx().opts.kong_version.clone();
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        let server = kong::server_token(&version);
        let waited = s.req.started_at.elapsed().as_millis().to_string();
        s.resp
            .headers
            .push_raw(b"X-Kong-Upstream-Latency", waited.as_bytes());
        s.resp.headers.push_raw(b"X-Kong-Proxy-Latency", b"0");
        let via = match s.resp.upstream_headers.get(b"via") {
            Some(v) => format!("{}, 1.1 {server}", String::from_utf8_lossy(v)),
            None => format!("1.1 {server}"),
        };
        s.resp.headers.set(b"Via", via.as_bytes());
        builtins::kong_server_header(&mut s.resp, server.as_bytes());
        let rid = s.kong_request_id.clone();
        s.resp.headers.set(b"X-Kong-Request-Id", rid.as_bytes());
    }

    /// Headers go out (Kong's and the Wasm header filters run first), then
    /// the body through the body filter, then the log and done steps.
    pub(super) fn send_response(&mut self, sid: u64, chunks: Vec<Chunk>) {
        let kong = self.ctx().opts.kong;
        if kong {
            self.kong_header_filter(sid);
        }
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        if s.entered_header_filter {
            return;
        }
        s.entered_header_filter = true;
        s.stage = Stage::Waiting;
        if let Some(c) = s.upstream_cancel.take() {
            c.store(true, Ordering::SeqCst);
        }
        let date = httpdate::fmt_http_date(SystemTime::now());
        builtins::produce_default_headers(&mut s.resp, b"nginx/1.27.1", date.as_bytes());
        let _ = self.pw_resume(sid, Phase::HeaderFilter, Step::RespHeaders);
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        s.resp_content_chosen = true;
        s.resp.header_only = s.req.method == b"HEAD"
            || s.resp.status == 204
            || s.resp.status == 304
            || (100..200).contains(&s.resp.status);
        s.client_headers = client_headers(s);
        s.resp.header_sent = true;
        if !s.resp.header_only {
            for chunk in chunks {
                self.body_filter(sid, chunk);
                if self.stream(sid).is_none_or(|s| s.stage == Stage::Complete) {
                    return;
                }
            }
        }
        self.finalize(sid);
    }

    /// `ngx_http_wasm_body_filter_handler` for one incoming chunk.
    pub(super) fn body_filter(&mut self, sid: u64, incoming: Chunk) {
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        let mut input = incoming;
        if s.resp_chunk_override {
            s.resp_chunk_override = false;
            input = s.resp_chunk.take().unwrap_or_default();
        }
        s.entered_body_filter = true;
        self.body_filter_resume(sid, input);
        let (cap_n, cap_size) = self.ctx().opts.response_body_buffers;
        let cap = cap_n.saturating_mul(cap_size);
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        if s.resp_buffering {
            let chunk = s.resp_chunk.take().unwrap_or_default();
            let bufs = s.resp_bufs.get_or_insert_with(Vec::new);
            let full = bufs.len() + chunk.data.len() > cap;
            bufs.extend_from_slice(&chunk.data);
            let last = chunk.last;
            if !full && !s.resp_chunk_eof && !last {
                // More to come: nothing goes out yet.
                return;
            }
            s.resp_buffering = false;
            let data = s.resp_bufs.as_mut().map(std::mem::take).unwrap_or_default();
            // Keep the marker that buffering already happened.
            s.resp_bufs = Some(Vec::new());
            let bufs = buffered_chain(data.len(), cap, &chunk);
            self.body_filter_resume(sid, Chunk { data, last, bufs });
        }
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        if let Some(chunk) = s.resp_chunk.take() {
            s.resp.body_sent.extend_from_slice(&chunk.data);
        }
    }

    pub(super) fn body_filter_resume(&mut self, sid: u64, chunk: Chunk) {
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        if chunk.last {
            s.resp_chunk_eof = true;
        }
        s.resp_chunk = Some(chunk);
        if !s.resp_buffering {
            s.pw.action = Action::Continue;
            let _ = self.pw_resume(sid, Phase::BodyFilter, Step::RespBody);
        }
    }
}

/// The chain of a buffered response body (`ngx_http_wasm_body_filter_buffer`):
/// the bytes copied into the module's buffers (up to their capacity), the
/// rest of the chunk that filled them, and the incoming empty last buffer,
/// which is linked as it is.
fn buffered_chain(total: usize, cap: usize, last_in: &Chunk) -> Vec<Buf> {
    let own = total.min(cap);
    let mut bufs = vec![Buf {
        len: own,
        tag: BufTag::Module,
    }];
    let rest_tag = last_in
        .bufs
        .last()
        .map_or(BufTag::Host(faults::UPSTREAM_BUF), |b| b.tag);
    if total > own {
        bufs.push(Buf {
            len: total - own,
            tag: rest_tag,
        });
    }
    if last_in.last && last_in.data.is_empty() {
        bufs.push(Buf {
            len: 0,
            tag: rest_tag,
        });
    }
    bufs
}
