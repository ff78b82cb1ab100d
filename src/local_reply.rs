//! How a reply the filter makes itself (deny, failure, response-hook result)
//! reaches the client exactly, on Kong's Wasm host.
//!
//! `send_http_response` is not enough on its own (docs/emulator.md, "Local
//! responses"):
//! - it keeps only the **last value** of a repeated header;
//! - it appends **one `\n`** to a non-empty body, and `Content-Length` counts it;
//! - its body lives in a buffer the filter must **never empty** with
//!   `set_http_response_body`: on ngx_wasm_module `a376e67` that puts a chain
//!   link of the request's pool on the connection's free list, and the next
//!   request on the keep-alive connection crashes the worker;
//! - builtin response headers (`Date`, `Server`, `Location`,
//!   `WWW-Authenticate`, ...) keep their slot in nginx when removed, so a
//!   remove-then-add drops them, and a second value cannot be added at all.
//!
//! [`Plan::new`] decides what to hand to `send_http_response`, which header
//! fix-ups to make in `on_http_response_headers` (which the host runs for local
//! replies too), and [`BodyCut`] where to cut the appended byte in
//! `on_http_response_body` without emptying the host's buffer.

use crate::http::Reply;
use crate::slots::{only_once_warning, response_single_slot as single_slot, HeaderFix};

/// How one reply is delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Length of the prefix of the reply's body to hand to
    /// `send_http_response`. A body of two bytes or more that ends in `\n` is
    /// sent without it: the host appends it back, and nothing needs cutting.
    pub send_len: usize,
    /// Where the body must be cut in `on_http_response_body` (the offset of
    /// the `\n` the host appended), if anywhere.
    pub cut_at: Option<usize>,
    /// Header changes for `on_http_response_headers`, in order.
    pub header_fixes: Vec<HeaderFix>,
    /// Warnings to log (a header the host can carry only once).
    pub warnings: Vec<String>,
}

impl Plan {
    pub fn new(reply: &Reply) -> Plan {
        let body = &reply.body;
        let (send_len, cut_at) = match body.len() {
            0 => (0, None),
            n if n >= 2 && body.ends_with(b"\n") => (n - 1, None),
            n => (n, Some(n)),
        };
        let mut header_fixes = Vec::new();
        let mut warnings = Vec::new();
        let mut names: Vec<&str> = Vec::new();
        for (name, _) in &reply.headers {
            if !names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                names.push(name.as_str());
            }
        }
        for name in names {
            let values: Vec<&str> = reply
                .headers
                .iter()
                .filter(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
                .collect();
            // `send_http_response` already set the last value of each name.
            if values.len() < 2 {
                continue;
            }
            if single_slot(name) {
                warnings.push(only_once_warning("response", name, values.len(), "client"));
                continue;
            }
            header_fixes.push(HeaderFix::Remove(name.to_string()));
            for v in values {
                header_fixes.push(HeaderFix::Add(name.to_string(), v.to_string()));
            }
        }
        if reply.header("content-type").is_none() {
            // The host gives a body its default type; the policy gave none.
            header_fixes.push(HeaderFix::Remove("content-type".into()));
        }
        header_fixes.push(HeaderFix::Set(
            "content-length".into(),
            body.len().to_string(),
        ));
        Plan {
            send_len,
            cut_at,
            header_fixes,
            warnings,
        }
    }
}

/// What to do with one `on_http_response_body` chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkAction {
    /// Leave it as it is.
    Keep,
    /// `set_http_response_body(at, size - at, "")`: cut the chunk's tail
    /// from `at` (> 0), so the host's buffer keeps its first `at` bytes.
    CutFrom(usize),
    /// The appended byte starts a chunk of its own: cutting it would empty a
    /// host buffer. Not produced by this host (a local body is one buffer);
    /// the chunk is kept and the glue logs an error.
    CannotCut,
    /// `set_http_response_body(0, size, "")`: drop the whole chunk (bytes of
    /// an upstream response the filter replaced; the connection is closed
    /// after it, see [`BodyCut::discard`]).
    Empty,
}

/// Tracks the bytes of a local reply's body as the host hands them over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyCut {
    cut_at: Option<usize>,
    seen: usize,
    discard: bool,
}

impl BodyCut {
    /// For a reply sent with `send_http_response` per `plan`.
    pub fn new(plan: &Plan) -> Self {
        BodyCut {
            cut_at: plan.cut_at,
            seen: 0,
            discard: false,
        }
    }

    /// For the rest of an upstream response the filter replaced from
    /// `on_http_response_headers`: every later chunk is dropped. Emptying
    /// those buffers is safe only because the glue also sets
    /// `Connection: close`, so nginx never reuses the connection's pool.
    pub fn discard() -> Self {
        BodyCut {
            cut_at: None,
            seen: 0,
            discard: true,
        }
    }

    pub fn on_chunk(&mut self, size: usize) -> ChunkAction {
        let start = self.seen;
        self.seen = self.seen.saturating_add(size);
        if size == 0 {
            return ChunkAction::Keep;
        }
        if self.discard {
            return ChunkAction::Empty;
        }
        match self.cut_at {
            Some(at) if at >= start && at < self.seen => {
                self.cut_at = None;
                match at - start {
                    0 => ChunkAction::CannotCut,
                    offset => ChunkAction::CutFrom(offset),
                }
            }
            _ => ChunkAction::Keep,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(headers: &[(&str, &str)], body: &[u8]) -> Reply {
        Reply {
            status: 403,
            headers: headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            body: body.to_vec(),
        }
    }

    /// What the client reads: what was sent, the host's `\n`, then the cut.
    fn delivered(r: &Reply, chunks: &[usize]) -> Vec<u8> {
        let plan = Plan::new(r);
        let sent = r.body.get(..plan.send_len).unwrap();
        let mut host = sent.to_vec();
        if !host.is_empty() {
            host.push(b'\n');
        }
        assert_eq!(chunks.iter().sum::<usize>(), host.len());
        let mut cut = BodyCut::new(&plan);
        let mut out = Vec::new();
        let mut pos = 0;
        for &n in chunks {
            let chunk = host.get(pos..pos + n).unwrap();
            pos += n;
            match cut.on_chunk(n) {
                ChunkAction::Keep => out.extend_from_slice(chunk),
                ChunkAction::CutFrom(at) => out.extend_from_slice(chunk.get(..at).unwrap()),
                ChunkAction::CannotCut | ChunkAction::Empty => panic!("unexpected"),
            }
        }
        out
    }

    #[test]
    fn bodies_arrive_exactly_without_emptying_the_host_buffer() {
        for body in [
            &b"denied"[..],
            b"denied\n",
            b"\n",
            b"x",
            b"a\n\n",
            b"{\"a\":1}\r\n",
        ] {
            let r = reply(&[], body);
            let plan = Plan::new(&r);
            let host_len = if plan.send_len == 0 {
                0
            } else {
                plan.send_len + 1
            };
            assert_eq!(delivered(&r, &[host_len]), body, "{body:?}");
        }
        let big = vec![b'z'; 1 << 20];
        assert_eq!(delivered(&reply(&[], &big), &[big.len() + 1]), big);
        // Split chunks (not produced by the host, handled anyway).
        assert_eq!(delivered(&reply(&[], b"abcdef"), &[3, 4]), b"abcdef");
    }

    #[test]
    fn a_body_ending_in_newline_needs_no_body_change() {
        let plan = Plan::new(&reply(&[], b"line\n"));
        assert_eq!((plan.send_len, plan.cut_at), (4, None));
        let plan = Plan::new(&reply(&[], b"\n"));
        assert_eq!((plan.send_len, plan.cut_at), (1, Some(1)));
        let plan = Plan::new(&reply(&[], b""));
        assert_eq!((plan.send_len, plan.cut_at), (0, None));
    }

    #[test]
    fn never_cuts_from_the_start_of_a_chunk() {
        let mut cut = BodyCut::new(&Plan::new(&reply(&[], b"abc")));
        assert_eq!(cut.on_chunk(3), ChunkAction::Keep);
        assert_eq!(cut.on_chunk(1), ChunkAction::CannotCut);
        assert_eq!(cut.on_chunk(0), ChunkAction::Keep);
    }

    #[test]
    fn discard_empties_every_later_chunk() {
        let mut cut = BodyCut::discard();
        assert_eq!(cut.on_chunk(0), ChunkAction::Keep);
        assert_eq!(cut.on_chunk(10), ChunkAction::Empty);
        assert_eq!(cut.on_chunk(5), ChunkAction::Empty);
    }

    #[test]
    fn only_repeated_ordinary_headers_are_rewritten() {
        let r = reply(
            &[
                ("set-cookie", "a=1"),
                ("www-authenticate", "Bearer"),
                ("set-cookie", "b=2"),
                ("x-one", "1"),
                ("content-type", "text/plain"),
            ],
            b"no",
        );
        let plan = Plan::new(&r);
        assert_eq!(
            plan.header_fixes,
            vec![
                HeaderFix::Remove("set-cookie".into()),
                HeaderFix::Add("set-cookie".into(), "a=1".into()),
                HeaderFix::Add("set-cookie".into(), "b=2".into()),
                HeaderFix::Set("content-length".into(), "2".into()),
            ]
        );
        assert!(plan.warnings.is_empty());
    }

    #[test]
    fn builtin_headers_are_never_removed_and_a_repeat_is_warned() {
        let r = reply(
            &[
                ("Date", "Mon, 01 Jan 2024 00:00:00 GMT"),
                ("location", "/a"),
                ("location", "/b"),
            ],
            b"",
        );
        let plan = Plan::new(&r);
        assert_eq!(
            plan.header_fixes,
            vec![
                HeaderFix::Remove("content-type".into()),
                HeaderFix::Set("content-length".into(), "0".into()),
            ]
        );
        assert_eq!(plan.warnings.len(), 1);
        assert!(
            plan.warnings[0].contains("'location'"),
            "{:?}",
            plan.warnings
        );
    }
}
