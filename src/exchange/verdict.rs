//! Shadow mode, and the operator's policy for failures of the policy server.
//!
//! - **Shadow** (`mode: shadow`): the policy server is called as in enforce
//!   mode, then the request goes on unchanged whatever it answered, and the
//!   response reaches the client unchanged; one `shadow:` line per request
//!   says what would have happened.
//! - **Fail-open** (`on_<class>: allow`): a failure of that class, for a
//!   request of the listed methods, lets the request go on unchanged (no
//!   directive of a reply that failed validation is kept), marked for the
//!   upstream with the class; a `fail-open:` line says so. Everything else
//!   is the failure's reply (`Exchange::fail`).
//!
//! Log lines name the decision, status, directives, failure class, method and
//! latency: never the path or a header value (they may carry credentials).

use super::read::Seen;
use super::{Action, Exchange, Stage};
use crate::config::Config;
use crate::failure::policy::{Class, FailurePolicy, Verdict};
use crate::failure::Failure;
use crate::host::Host;
use crate::http::Reply;
use crate::metrics;
use crate::protocol::decision::{Directives, RequestOutcome};
use crate::protocol::request::Payload;
use crate::protocol::response_hook::UpstreamResponse;
use std::time::SystemTime;

fn latency_ms(h: &mut dyn Host, since: SystemTime) -> u128 {
    h.now().duration_since(since).map_or(0, |d| d.as_millis())
}

/// The directive kinds an allow carries, for the shadow line.
fn directive_kinds(d: &Directives) -> String {
    let kinds: Vec<&str> = [
        ("headers", d.header_ops.len() > 1),
        ("method", d.method.is_some()),
        ("host", d.host.is_some()),
        ("path", d.path.is_some()),
        ("query", d.query.is_some()),
        ("body", d.body.is_some()),
        ("state", d.state.is_some()),
    ]
    .iter()
    .filter(|(_, on)| *on)
    .map(|(k, _)| *k)
    .collect();
    if kinds.is_empty() {
        "-".into()
    } else {
        kinds.join(",")
    }
}

/// The shadow line's fields for a `/sideband/request` reply.
pub fn decision_fields(outcome: &RequestOutcome) -> String {
    match outcome {
        RequestOutcome::Deny(reply) => {
            format!("decision=deny status={} directives=- class=-", reply.status)
        }
        RequestOutcome::Allow(d) => format!(
            "decision=allow status=- directives={} class=-",
            directive_kinds(d)
        ),
    }
}

/// The shadow line's fields for a failure.
fn failure_fields(failure: &Failure) -> String {
    format!(
        "decision=fail status={} directives=- class={}",
        failure.reply().status,
        Class::of(failure).map_or("-", Class::name)
    )
}

impl Exchange {
    /// Shadow mode and a failure before any call (or the host proxying
    /// before a decision): logged, and the host goes on.
    pub(super) fn shadow_pass(&mut self, failure: &Failure) -> Action {
        failure.write_log();
        if self.shadow_note.is_none() {
            self.shadow_note = Some(format!("{} latency_ms=0", failure_fields(failure)));
        }
        self.shadow_flush(None);
        self.stage = Stage::Forwarded;
        Action::Continue
    }

    /// Shadow mode: what the request call would have done, kept for the
    /// request's one `shadow:` line.
    pub(super) fn shadow_decided(&mut self, h: &mut dyn Host, fields: String, asked: SystemTime) {
        let ms = latency_ms(h, asked);
        self.shadow_note = Some(format!("{fields} latency_ms={ms}"));
    }

    /// Writes the request's one `shadow:` line, with what the response call
    /// would have done when there was one.
    pub(super) fn shadow_flush(&mut self, response: Option<String>) {
        match (self.shadow_note.take(), response) {
            (Some(note), Some(r)) => log::info!("shadow: {note} {r}"),
            (Some(note), None) => log::info!("shadow: {note}"),
            (None, _) => {}
        }
    }

    /// Shadow mode: the `/sideband/response` reply (or its failure) ends
    /// the request's `shadow:` line.
    pub(super) fn shadow_responded(
        &mut self,
        h: &mut dyn Host,
        reply: Result<&Reply, &Failure>,
        asked: SystemTime,
    ) {
        let ms = latency_ms(h, asked);
        let fields = match reply {
            Ok(r) => format!(
                "response_decision=replace response_status={} response_class=- response_latency_ms={ms}",
                r.status
            ),
            Err(f) => format!(
                "response_decision=fail response_status={} response_class={} response_latency_ms={ms}",
                f.reply().status,
                Class::of(f).map_or("-", Class::name)
            ),
        };
        self.shadow_flush(Some(fields));
    }

    /// `/sideband/request` failed (or could not be made). Returns what the
    /// request step answers the host; from a callback, `Continue` means
    /// resume.
    pub(super) fn refused_decision(
        &mut self,
        h: &mut dyn Host,
        config: &Config,
        seen: Box<Seen>,
        sent: Payload,
        failure: Failure,
        asked: SystemTime,
    ) -> Action {
        self.record(h, &failure);
        if let Some(action) = self.serve_stale(h, config, &seen, &failure) {
            return action;
        }
        self.outcome(h, metrics::outcome_of(&failure));
        if config.shadow {
            self.shadow_decided(h, failure_fields(&failure), asked);
            return self.let_through(h, config, seen, sent, None);
        }
        match config
            .failure_policy
            .verdict(&failure, &seen.request.method)
        {
            Verdict::Deny(reply) => {
                self.send(h, reply);
                Action::Pause
            }
            Verdict::Allow(class) => {
                log::warn!(
                    "{}",
                    FailurePolicy::fail_open_line(class, &seen.request.method, &failure)
                );
                self.let_through(h, config, seen, sent, Some(class))
            }
        }
    }

    /// The request goes on as the client sent it: in shadow mode (`marker`
    /// `None`), or let through by the failure policy (`marker`: its class).
    /// In shadow mode, a request the response hook cannot send itself is
    /// proxied by the host instead (without the hook).
    pub(super) fn let_through(
        &mut self,
        h: &mut dyn Host,
        config: &Config,
        seen: Box<Seen>,
        sent: Payload,
        marker: Option<Class>,
    ) -> Action {
        match self.proceed(h, config, seen, sent, Directives::default(), marker) {
            Ok(Action::Continue) => {
                self.shadow_flush(None);
                Action::Continue
            }
            Ok(action) => action,
            Err(f) if config.shadow => self.shadow_pass(&f),
            Err(f) => {
                self.fail(h, f);
                Action::Pause
            }
        }
    }

    /// `/sideband/response` failed (or could not be made): in shadow mode,
    /// or when the failure policy allows it, the client gets the upstream's
    /// response as it came.
    pub(super) fn refused_response(
        &mut self,
        h: &mut dyn Host,
        config: &Config,
        upstream: &UpstreamResponse,
        method: &str,
        failure: Failure,
        asked: SystemTime,
    ) {
        self.record(h, &failure);
        if config.shadow {
            self.shadow_responded(h, Err(&failure), asked);
            self.send(h, upstream.unchanged());
            return;
        }
        match config.failure_policy.verdict(&failure, method) {
            Verdict::Deny(reply) => self.send(h, reply),
            Verdict::Allow(class) => {
                log::warn!(
                    "{} call=response",
                    FailurePolicy::fail_open_line(class, method, &failure)
                );
                self.send(h, upstream.unchanged());
            }
        }
    }

    /// A failure's log line, and the back-off it starts.
    pub(super) fn record(&self, h: &mut dyn Host, failure: &Failure) {
        failure.write_log();
        if let Some(secs) = failure.backoff_secs() {
            let now = h.now();
            self.shared.backoff.borrow_mut().trip(now, secs);
        }
    }
}
