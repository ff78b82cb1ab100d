//! Proxying: the request Kong (or nginx) sends to the service, and the
//! service's response turned into the response headers and body chunks
//! that go through the filters.

use super::Host;
use crate::emulator::api::LogLevel;
use crate::emulator::headers::HeaderList;
use crate::emulator::net::{self, UpstreamRequest};
use crate::emulator::state::{Chunk, Stage};
use crate::emulator::{builtins, faults, script};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

impl Host {
    /// Proxies the request to the service (Kong) or the upstream (nginx).
    pub(super) fn proxy(&mut self, sid: u64) {
        if self.ctx().faults.crashed() {
            return;
        }
        let kong = self.ctx().opts.kong;
        let Some(s) = self.stream(sid) else {
            return;
        };
        let Some(def) = self.ctx().chains.get(s.chain) else {
            self.finalize_error(sid, 502);
            return;
        };
        let service = def.service.clone();
        let req = &s.req;
        let var = |name: &str| -> String {
            req.set_vars
                .get(name)
                .and_then(|v| v.as_ref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default()
        };
        let body = req.body.clone();
        let send_length = req.has_body_framing || req.body_replaced;
        let mut head = Vec::new();
        let (host, port, tls, sni);
        let ms = |v: u64| Duration::from_millis(v.max(1));
        if kong {
            let (h, p) = s
                .kong_target
                .clone()
                .unwrap_or_else(|| (service.host.clone(), service.port));
            let scheme = s
                .kong_scheme
                .clone()
                .unwrap_or_else(|| var("upstream_scheme"));
            let mut uri = var("upstream_uri");
            if uri.is_empty() {
                uri = "/".to_string();
            }
            let upstream_host = var("upstream_host");
            head.extend_from_slice(&req.method);
            head.extend_from_slice(format!(" {uri} HTTP/1.1\r\n").as_bytes());
            let mut set = |name: &str, value: String| {
                if !value.is_empty() {
                    head.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
                }
            };
            set("Host", upstream_host.clone());
            set("Connection", var("upstream_connection"));
            set("TE", var("upstream_te"));
            set("Upgrade", var("upstream_upgrade"));
            set("Via", var("upstream_via"));
            set("X-Forwarded-For", var("upstream_x_forwarded_for"));
            set("X-Forwarded-Proto", var("upstream_x_forwarded_proto"));
            set("X-Forwarded-Host", var("upstream_x_forwarded_host"));
            set("X-Forwarded-Port", var("upstream_x_forwarded_port"));
            set("X-Forwarded-Path", var("upstream_x_forwarded_path"));
            set("X-Forwarded-Prefix", var("upstream_x_forwarded_prefix"));
            set("X-Real-IP", req.client_addr.ip().to_string());
            set("X-Kong-Request-Id", s.kong_request_id.clone());
            if send_length {
                set("Content-Length", body.len().to_string());
            }
            const SKIP: [&str; 17] = [
                "host",
                "connection",
                "te",
                "upgrade",
                "via",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-forwarded-host",
                "x-forwarded-port",
                "x-forwarded-path",
                "x-forwarded-prefix",
                "x-real-ip",
                "x-kong-request-id",
                "content-length",
                "transfer-encoding",
                "keep-alive",
                "expect",
            ];
            let hop: Vec<String> = req
                .headers
                .get(b"connection")
                .map(|v| {
                    String::from_utf8_lossy(v)
                        .split(',')
                        .map(|t| t.trim().to_ascii_lowercase())
                        .filter(|t| !matches!(t.as_str(), "keep-alive" | "close" | "upgrade"))
                        .collect()
                })
                .unwrap_or_default();
            append_headers(&mut head, &req.headers, |n| {
                let lower = String::from_utf8_lossy(n).to_ascii_lowercase();
                SKIP.contains(&lower.as_str())
                    || hop.contains(&lower)
                    || lower == "proxy"
                    || lower == "proxy-connection"
            });
            tls = scheme == "https";
            sni = upstream_host.split(':').next().unwrap_or("").to_string();
            host = h;
            port = p;
        } else {
            let path = if req.uri_changed {
                let mut p = escape_path(&req.uri);
                if !req.args.is_empty() {
                    p.push(b'?');
                    p.extend_from_slice(&req.args);
                }
                p
            } else {
                req.request_uri.clone()
            };
            head.extend_from_slice(&req.method);
            head.push(b' ');
            head.extend_from_slice(&path);
            head.extend_from_slice(b" HTTP/1.1\r\n");
            let host_header = req
                .headers
                .get(b"host")
                .map(|h| String::from_utf8_lossy(h).into_owned())
                .unwrap_or_else(|| service.host.clone());
            head.extend_from_slice(
                format!("Host: {host_header}\r\nConnection: close\r\n").as_bytes(),
            );
            if send_length {
                head.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
            }
            append_headers(&mut head, &req.headers, |n| {
                let lower = String::from_utf8_lossy(n).to_ascii_lowercase();
                matches!(
                    lower.as_str(),
                    "host"
                        | "connection"
                        | "content-length"
                        | "transfer-encoding"
                        | "keep-alive"
                        | "te"
                        | "upgrade"
                        | "expect"
                )
            });
            tls = service.protocol == "https";
            sni = service.host.clone();
            host = service.host.clone();
            port = service.port;
        }
        head.extend_from_slice(b"\r\n");
        let head_request = req.method == b"HEAD";
        let request = UpstreamRequest {
            host,
            port,
            tls,
            sni,
            head,
            body,
            connect_timeout: ms(service.connect_timeout),
            send_timeout: ms(service.write_timeout),
            read_timeout: ms(service.read_timeout),
            head_request,
        };
        let cancel = Arc::new(AtomicBool::new(false));
        let job = {
            let Some(s) = self.stream_mut(sid) else {
                return;
            };
            if let Some(old) = s.upstream_cancel.take() {
                old.store(true, Ordering::SeqCst);
            }
            s.upstream_requests += 1;
            s.upstream_job += 1;
            s.stage = Stage::Upstream;
            s.upstream_cancel = Some(cancel.clone());
            s.upstream_job
        };
        let ctx = self.ctx_mut();
        ctx.stats.upstream_requests += 1;
        if let Some(network) = ctx.network.clone() {
            let target = format!("{}:{}", request.host, request.port);
            let outgoing = script::Outgoing {
                target: target.clone(),
                head: &request.head,
                body: &request.body,
            };
            let result = script::upstream_result(network.upstream(&outgoing), &target);
            let _ = ctx.tx.send(net::Completion::Upstream {
                stream: sid,
                job,
                result,
            });
            return;
        }
        match net::spawn_upstream(ctx.tx.clone(), sid, job, request, ctx.tls.clone(), cancel) {
            Ok(handle) => ctx.threads.push(handle),
            Err(e) => {
                self.log(
                    LogLevel::Error,
                    0,
                    format!("[emulator] could not start upstream I/O: {e}"),
                );
                self.finalize_error(sid, 502);
            }
        }
    }

    /// The service answered (or failed).
    pub(super) fn upstream_done(
        &mut self,
        sid: u64,
        job: u64,
        result: Result<net::UpstreamResponse, net::UpstreamError>,
    ) {
        let Some(s) = self.stream(sid) else {
            return;
        };
        if s.upstream_job != job || s.stage != Stage::Upstream {
            return;
        }
        let resp = match result {
            Ok(r) => r,
            Err(e) => {
                self.log(LogLevel::Error, 0, e.message);
                self.finalize_error(sid, e.status);
                return;
            }
        };
        let kong = self.ctx().opts.kong;
        let chunk_size = self.ctx().opts.upstream_chunk_size.max(1);
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        s.resp.status = resp.status;
        s.resp.upstream_status = Some(resp.status);
        s.resp.upstream_addr = Some(resp.addr.clone());
        s.resp.upstream_headers = resp.headers.clone();
        let hop: Vec<String> = resp
            .headers
            .get(b"connection")
            .map(|v| {
                String::from_utf8_lossy(v)
                    .split(',')
                    .map(|t| t.trim().to_ascii_lowercase())
                    .collect()
            })
            .unwrap_or_default();
        for (name, value) in resp.headers.iter() {
            let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
            let hidden = matches!(
                lower.as_str(),
                "connection"
                    | "keep-alive"
                    | "transfer-encoding"
                    | "upgrade"
                    | "te"
                    | "trailer"
                    | "proxy-connection"
            ) || lower.starts_with("x-accel-")
                || (!kong && (lower == "date" || lower == "server"))
                || (kong && hop.contains(&lower));
            if hidden {
                continue;
            }
            if lower == "content-type" {
                s.resp.content_type = Some(value.to_vec());
            } else {
                builtins::copy_upstream_header(&mut s.resp.headers, name, value);
            }
        }
        s.resp.content_length_n = match resp.content_length {
            Some(n) if !resp.chunked => i64::try_from(n).unwrap_or(-1),
            _ => -1,
        };
        let mut chunks: Vec<Chunk> = resp
            .body
            .chunks(chunk_size)
            .map(|c| Chunk::host(c.to_vec(), false, faults::UPSTREAM_BUF))
            .collect();
        chunks.push(Chunk::host(Vec::new(), true, faults::LAST_BUF));
        self.send_response(sid, chunks);
    }
}

/// Appends the request headers not filtered out by `skip`, in list order,
/// as nginx's proxy module copies `r->headers_in.headers`
/// (`ngx_http_proxy_create_request`): entries a filter removed (blanked,
/// hash 0) are copied too, with their current name and value. `skip` is
/// the set of names the configuration's `proxy_set_header` (and Kong's Lua)
/// replaces; it is applied by name, blanked or not.
fn append_headers(head: &mut Vec<u8>, headers: &HeaderList, skip: impl Fn(&[u8]) -> bool) {
    for (n, v) in headers.iter_all() {
        if skip(n) {
            continue;
        }
        head.extend_from_slice(n);
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
}

/// Escapes a decoded path for the request line.
fn escape_path(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in path {
        if b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}
