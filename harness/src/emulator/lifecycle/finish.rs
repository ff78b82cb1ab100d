//! Local responses and the end of a request: flushing a stashed local
//! response, Kong's and nginx's error responses, the log and done steps,
//! and what the client receives.

use super::Host;
use crate::emulator::api::{ClientResponse, HttpVersion};
use crate::emulator::headers::{HeaderList, MapOp};
use crate::emulator::state::{Chunk, Phase, Response, Stage, Step, Stream};
use crate::emulator::{builtins, faults, kong, maps};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

impl Host {
    /// Sends the stashed local response (`ngx_http_wasm_flush_local_response`).
    pub(super) fn flush_local(&mut self, sid: u64) {
        let kong = self.ctx().opts.kong;
        let mut notes = Vec::new();
        let body = {
            let Some(s) = self.stream_mut(sid) else {
                return;
            };
            let Some(local) = s.local.take() else {
                return;
            };
            s.local_flushed = true;
            s.local_sent = true;
            s.resp.status = local.status;
            s.resp.reason = local.reason;
            for (k, v) in &local.headers {
                notes.extend(builtins::set_response_header(&mut s.resp, k, v, MapOp::Set));
            }
            let len = local.body.as_ref().map_or(0, Vec::len);
            if len > 0 && s.resp.content_type.is_none() {
                s.resp.content_type = default_type(kong, &s.req.uri);
            }
            let len_i = i64::try_from(len).unwrap_or(i64::MAX);
            if !(s.resp.content_length_n >= 0 && s.resp.content_length_n == len_i) {
                let _ = builtins::set_response_header(
                    &mut s.resp,
                    b"Content-Length",
                    len.to_string().as_bytes(),
                    MapOp::Set,
                );
            }
            local.body
        };
        if maps::apply_notes(self.ctx_mut(), notes).is_err() {
            return;
        }
        // One buffer for a body (the host appended its `\n`); without one,
        // nginx's empty last buffer.
        let chunk = match body {
            Some(data) => Chunk::host(data, true, faults::LOCAL_BODY),
            None => Chunk::host(Vec::new(), true, faults::LAST_BUF),
        };
        self.send_response(sid, vec![chunk]);
    }

    /// Log and done steps, then the response is ready.
    pub(super) fn finalize(&mut self, sid: u64) {
        if let Some(s) = self.stream_mut(sid) {
            s.entered_log_phase = true;
        }
        let _ = self.pw_resume(sid, Phase::Log, Step::Log);
        self.done(sid);
    }

    /// The request pool is freed: `on_delete`, pending work cancelled.
    pub(super) fn done(&mut self, sid: u64) {
        let _ = self.pw_resume(sid, Phase::Done, Step::Done);
        faults::orphan_calls(self.ctx_mut(), sid);
        self.cancel_calls(sid);
        faults::request_freed(self.ctx_mut(), sid);
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        if let Some(c) = s.upstream_cancel.take() {
            c.store(true, Ordering::SeqCst);
        }
        s.stage = Stage::Complete;
        s.outcome = Some(outcome(s));
    }

    /// A response Kong or nginx produces before the filters are attached.
    pub(super) fn early_error(&mut self, sid: u64, status: u16) {
        if self.ctx().opts.kong {
            let msg = kong::error_message(status);
            self.kong_exit(sid, status, &msg);
        } else {
            self.nginx_error_page(sid, status, false);
        }
    }

    /// `kong.response.exit` with Kong's JSON error body (no filters run).
    pub(super) fn kong_exit(&mut self, sid: u64, status: u16, message: &str) {
        let version = self.ctx().opts.kong_version.clone();
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        let accept = s
            .req
            .headers
            .get(b"accept")
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let (body, ctype) = kong::error_body(message, &s.kong_request_id, accept.as_deref());
        let mut headers = HeaderList::new();
        headers.push_raw(b"Content-Length", body.len().to_string().as_bytes());
        headers.push_raw(b"X-Kong-Response-Latency", b"0");
        headers.push_raw(b"Server", kong::server_token(&version).as_bytes());
        headers.push_raw(b"X-Kong-Request-Id", s.kong_request_id.as_bytes());
        s.resp = Response {
            status,
            headers,
            content_type: Some(ctype.as_bytes().to_vec()),
            content_length_n: i64::try_from(body.len()).unwrap_or(-1),
            keepalive: s.resp.keepalive,
            header_sent: true,
            body_sent: body,
            upstream_status: s.resp.upstream_status,
            ..Response::default()
        };
        s.client_headers = client_headers(s);
        s.stage = Stage::Complete;
        let mut out = outcome(s);
        out.local = false;
        s.outcome = Some(out);
    }

    /// An error status from nginx (500 for a failed filter, 502/504 for the
    /// upstream). Inside Kong, `error_page` redirects to Kong's error handler
    /// and the filters see nothing more (only `on_delete`); in plain nginx
    /// the error page goes through the response steps.
    pub(super) fn finalize_error(&mut self, sid: u64, status: u16) {
        if self.stream(sid).is_none_or(|s| s.entered_header_filter) {
            self.done(sid);
            return;
        }
        if self.ctx().opts.kong {
            let msg = kong::error_message(status);
            let trapped = self.stream(sid).is_some_and(|s| s.trapped);
            let upstream_requests = self.stream(sid).map_or(0, |s| s.upstream_requests);
            self.kong_exit(sid, status, &msg);
            // The request pool is freed after the error page.
            if let Some(s) = self.stream_mut(sid) {
                s.stage = Stage::Waiting;
            }
            let _ = self.pw_resume(sid, Phase::Done, Step::Done);
            self.cancel_calls(sid);
            if let Some(s) = self.stream_mut(sid) {
                s.stage = Stage::Complete;
                let mut out = outcome(s);
                out.trapped = trapped || s.trapped;
                out.upstream_requests = upstream_requests;
                s.outcome = Some(out);
            }
        } else {
            self.nginx_error_page(sid, status, true);
        }
    }

    /// nginx's own error page; with `filters`, it goes through the response
    /// steps of the chain (filters before a failed one still run).
    pub(super) fn nginx_error_page(&mut self, sid: u64, status: u16, filters: bool) {
        let page = kong::nginx_error_page(status);
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        s.resp.status = status;
        s.resp.reason = None;
        s.resp.headers = HeaderList::new();
        s.resp.content_type = Some(b"text/html".to_vec());
        s.resp.content_length_n = i64::try_from(page.len()).unwrap_or(-1);
        if filters && !s.pw.execs.is_empty() {
            self.send_response(sid, vec![Chunk::host(page, true, faults::ERROR_PAGE)]);
        } else {
            s.resp.headers.set_first(b"Server", b"nginx/1.27.1");
            let date = httpdate::fmt_http_date(SystemTime::now());
            s.resp.headers.set_first(b"Date", date.as_bytes());
            s.client_headers = client_headers(s);
            s.resp.header_sent = true;
            s.resp.body_sent = page;
            s.stage = Stage::Complete;
            s.outcome = Some(outcome(s));
        }
    }
}

/// nginx's default content type for a local response body: by extension
/// (nginx's built-in types), else `default_type` (`''` in Kong's location,
/// `text/plain` in stock nginx).
fn default_type(kong: bool, uri: &[u8]) -> Option<Vec<u8>> {
    let ext = uri
        .rsplit(|&b| b == b'/')
        .next()
        .and_then(|last| {
            last.rsplit(|&b| b == b'.')
                .next()
                .filter(|e| e.len() < last.len())
        })
        .map(|e| String::from_utf8_lossy(e).to_ascii_lowercase());
    match ext.as_deref() {
        Some("html") => return Some(b"text/html".to_vec()),
        Some("gif") => return Some(b"image/gif".to_vec()),
        Some("jpg") => return Some(b"image/jpeg".to_vec()),
        _ => {}
    }
    if kong {
        None
    } else {
        Some(b"text/plain".to_vec())
    }
}

/// The status line's headers as nginx's header filter writes them.
pub(super) fn client_headers(s: &Stream) -> Vec<(String, Vec<u8>)> {
    let resp = &s.resp;
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let no_content = resp.status == 204;
    if let Some(ct) = resp
        .content_type
        .as_ref()
        .filter(|c| !c.is_empty() && !no_content)
    {
        out.push(("Content-Type".to_string(), ct.clone()));
    }
    let has_cl = resp.headers.contains(b"Content-Length");
    if !has_cl && resp.content_length_n >= 0 && !no_content {
        out.push((
            "Content-Length".to_string(),
            resp.content_length_n.to_string().into_bytes(),
        ));
    }
    let chunked = s.req.version == HttpVersion::Http11
        && !has_cl
        && (resp.content_length_n < 0 || no_content)
        && !resp.header_only
        && !(no_content || resp.status == 304 || s.req.method == b"HEAD");
    if chunked {
        out.push(("Transfer-Encoding".to_string(), b"chunked".to_vec()));
    }
    if s.req.version != HttpVersion::Http2 {
        let keepalive = s.response_keepalive();
        let value: &[u8] = if resp.status == 101 {
            b"upgrade"
        } else if keepalive {
            b"keep-alive"
        } else {
            b"close"
        };
        out.push(("Connection".to_string(), value.to_vec()));
    }
    for (n, v) in resp.headers.iter() {
        let name = String::from_utf8_lossy(n).into_owned();
        let name = if s.req.version == HttpVersion::Http2 {
            name.to_ascii_lowercase()
        } else {
            name
        };
        out.push((name, v.to_vec()));
    }
    out
}

/// What the client receives.
fn outcome(s: &Stream) -> ClientResponse {
    let mut body = s.resp.body_sent.clone();
    let mut framing_error = None;
    let announced = s
        .client_headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.trim().parse::<usize>().ok());
    if s.resp.header_only {
        body.clear();
    } else if let Some(n) = announced {
        if body.len() > n {
            framing_error = Some(format!(
                "{} body bytes sent with Content-Length: {n}; the client reads {n} and sees the rest as garbage",
                body.len()
            ));
            body.truncate(n);
        } else if body.len() < n {
            framing_error = Some(format!(
                "{} body bytes sent with Content-Length: {n}; the client waits for the missing bytes",
                body.len()
            ));
        }
    }
    ClientResponse {
        status: s.resp.status,
        headers: s.client_headers.clone(),
        body,
        local: s.local_sent,
        upstream_requests: s.upstream_requests,
        trapped: s.trapped,
        stalled: false,
        framing_error,
        host_fault: None,
    }
}
