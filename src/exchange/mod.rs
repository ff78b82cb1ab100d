//! One request's exchange with the policy server, as a state machine over the
//! host's steps. It reads host facts and asks for host actions through
//! [`Host`]; the proxy-wasm adapter only forwards each step to it.
//!
//! ```text
//! request headers ──(no body)──────────────┐
//!        ├─(Content-Length)→ request body ─┤ POST /sideband/request
//!        └─(chunked)→ gate: POST with an   │
//!           empty body; allow → body step ─┘ (no body step: the host proxies
//!                                          ▼  what the gate allowed)
//!                     deny → local reply   allow ─┬─ hook off: apply directives, host proxies
//!                                                 └─ hook on: call the upstream ourselves,
//!                                                    POST /sideband/response, local reply
//! ```
//!
//! Each [`Stage`] holds exactly what the next step needs, so a request in
//! flight cannot lack its payload, nor a replied one keep a token. Every
//! failure goes through [`Exchange::fail`]: one log line, one client reply
//! (`crate::failure`).
//!
//! - [`read`]: what the host knows about the client request.
//! - [`forward`]: an allow with the response hook off.
//! - [`hook`]: the response hook's upstream call and `/sideband/response`.
//! - [`deliver`]: local replies delivered exactly, and the response steps.
//! - [`verdict`]: shadow mode, and the operator's policy for failures of the
//!   policy server (deny, or let the request through marked).

mod cached;
mod deliver;
mod forward;
mod hook;
mod read;
#[cfg(test)]
mod tests;
mod verdict;

use crate::cache::DecisionCache;
use crate::config::Config;
use crate::debug;
use crate::failure::backoff::Backoff;
use crate::failure::policy::{Class, FailurePolicy, Verdict};
use crate::failure::{Call, Failure};
use crate::host::{Action, Body, Dispatch, Host, Map};
use crate::http::Reply;
use crate::metrics::{self, Metric, Metrics, Outcome};
use crate::protocol::decision::{self, CallResult, Directives, HeaderOp, RequestOutcome};
use crate::protocol::reply::Members;
use crate::protocol::request::Payload;
use crate::protocol::response_hook::{self, UpstreamResponse};
use crate::protocol::Endpoint;
use crate::slots;
use crate::upstream::Target;
use deliver::Delivery;
use read::{Announced, Seen};
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, SystemTime};

enum Stage {
    /// Nothing decided yet.
    Start,
    /// The request has a body; waiting for the body step. `gated`: the
    /// request as it would be with an empty body is already allowed (and its
    /// directives applied), because the host proxies it at once if the body
    /// turns out empty (see [`Exchange::gate_decided`]).
    AwaitingBody { seen: Box<Seen>, gated: bool },
    /// `/sideband/request` in flight. `gate`: about the request as it would
    /// be with an empty body, before its chunked body arrives.
    Deciding {
        token: u32,
        seen: Box<Seen>,
        sent: Payload,
        asked: SystemTime,
        gate: bool,
    },
    /// The response hook's upstream call in flight.
    Upstream {
        token: u32,
        seen: Box<Seen>,
        sent: Payload,
        directives: Box<Directives>,
        target: Target,
    },
    /// `/sideband/response` in flight.
    Responding {
        token: u32,
        upstream: Box<UpstreamResponse>,
        method: String,
        asked: SystemTime,
    },
    /// Allowed; the host proxies the (modified) request.
    Forwarded,
    /// The filter answered with a local response.
    Replied(Delivery),
}

/// What the requests of one filter configuration share within a worker
/// (the root context holds it): the 429 back-off, the decision cache, the
/// metric ids.
#[derive(Debug, Default)]
pub struct Shared {
    pub backoff: RefCell<Backoff>,
    /// `None` when the cache is off, or cannot be used with this
    /// configuration (response hook on, shadow mode).
    pub cache: RefCell<Option<DecisionCache>>,
    pub metrics: Metrics,
}

impl Shared {
    pub fn new(config: Option<&Config>, metrics: Metrics) -> Shared {
        let cache = config
            .filter(|c| !c.enable_response_hook && !c.shadow)
            .and_then(|c| c.cache.clone())
            .map(DecisionCache::new);
        Shared {
            backoff: RefCell::default(),
            cache: RefCell::new(cache),
            metrics,
        }
    }
}

pub struct Exchange {
    config: Option<Rc<Config>>,
    shared: Rc<Shared>,
    stage: Stage,
    /// Shadow mode: the request's `shadow:` line until it is complete.
    shadow_note: Option<String>,
    /// The request's outcome was counted (one per request).
    counted: bool,
}

impl Exchange {
    /// `config` is `None` when the filter's configuration was refused: every
    /// request is then answered 500.
    pub fn new(config: Option<Rc<Config>>, shared: Rc<Shared>) -> Self {
        Exchange {
            config,
            shared,
            stage: Stage::Start,
            shadow_note: None,
            counted: false,
        }
    }

    fn count(&self, h: &mut dyn Host, m: Metric) {
        self.shared.metrics.count(h, m);
    }

    /// Counts what the client got, once per request.
    fn outcome(&mut self, h: &mut dyn Host, o: Outcome) {
        if !self.counted {
            self.counted = true;
            self.count(h, Metric::Decisions(o));
        }
    }

    fn shadow(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.shadow)
    }

    fn debug_enabled(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.enable_debug_logging)
    }

    pub fn on_request_headers(&mut self, h: &mut dyn Host) -> Action {
        let Some(config) = self.config.clone() else {
            self.fail(
                h,
                Failure::Host {
                    what: "filter has no valid configuration".into(),
                },
            );
            return Action::Pause;
        };
        let map = h.header_map(Map::RequestHeaders);
        let cache_key = match self.lookup_headers(h, &config, &map) {
            Ok(key) => key,
            Err(action) => return action,
        };
        match read::client_request(h, &map, &config.failure_policy.marker_header) {
            Err(f) if config.shadow => self.shadow_pass(&f),
            Err(f) => {
                self.fail(h, f);
                Action::Pause
            }
            Ok((seen, Announced::Length)) => {
                self.stage = Stage::AwaitingBody {
                    seen: Box::new(seen),
                    gated: false,
                };
                Action::Continue
            }
            // A chunked body may be empty, and then the host runs no body
            // step: it proxies the request as soon as this step continues. So
            // the request is first decided as it would be without a body.
            Ok((seen, Announced::Unsized)) if !config.shadow => {
                let mut empty = seen;
                empty.request.body = Some(Vec::new());
                self.ask_policy(h, &config, empty, true)
            }
            Ok((mut seen, _)) => {
                seen.request.body = Some(Vec::new());
                seen.cache_key = cache_key;
                self.ask_policy(h, &config, seen, false)
            }
        }
    }

    pub fn on_request_body(&mut self, h: &mut dyn Host, size: usize, end: bool) -> Action {
        match std::mem::replace(&mut self.stage, Stage::Start) {
            stage @ Stage::AwaitingBody { .. } if !end => {
                self.stage = stage;
                Action::Pause
            }
            Stage::AwaitingBody { mut seen, .. } => {
                let body = match size {
                    0 => Some(Vec::new()),
                    _ => h.body(Body::Request, size),
                };
                if body.is_none() {
                    seen.unread_body_size = size;
                    log::warn!(
                        "request body of {size} bytes cannot be read (larger than \
                         client_body_buffer_size); it is not sent to the policy provider"
                    );
                }
                seen.request.body = body;
                let Some(config) = self.config.clone() else {
                    return Action::Pause;
                };
                match self.lookup_body(h, &config, &mut seen) {
                    Some(action) => action,
                    None => self.ask_policy(h, &config, *seen, false),
                }
            }
            Stage::Forwarded if size > 0 && !self.shadow() => {
                self.fail(
                    h,
                    Failure::Host {
                        what: "a request body arrived after the request was authorized without \
                               one (no Content-Length or Transfer-Encoding); refusing it"
                            .into(),
                    },
                );
                Action::Pause
            }
            stage => {
                self.stage = stage;
                Action::Continue
            }
        }
    }

    /// Posts the request's payload to `/sideband/request`. Returns what the
    /// request step answers the host (in a step, a request let through
    /// continues by the returned action, not by a resume).
    fn ask_policy(&mut self, h: &mut dyn Host, config: &Config, seen: Seen, gate: bool) -> Action {
        let sent = match seen.request.payload() {
            Ok(p) => p,
            Err(what) => {
                self.fail(h, Failure::Host { what });
                return Action::Pause;
            }
        };
        let asked = h.now();
        match self.call_sideband(h, config, &config.request_endpoint, sent.text(), asked) {
            Ok(token) => {
                self.stage = Stage::Deciding {
                    token,
                    seen: Box::new(seen),
                    sent,
                    asked,
                    gate,
                };
                Action::Pause
            }
            Err(f) if gate => self.gate_decided(h, config, Box::new(seen), Err(f)),
            Err(f) => self.refused_decision(h, config, Box::new(seen), sent, f, asked),
        }
    }

    /// One sideband call, unless the configuration's 429 back-off runs.
    fn call_sideband(
        &self,
        h: &mut dyn Host,
        config: &Config,
        endpoint: &Endpoint,
        payload: &str,
        now: SystemTime,
    ) -> Result<u32, Failure> {
        if let Some(secs) = self.shared.backoff.borrow_mut().remaining(now) {
            return Err(Failure::RateLimited {
                retry_after_secs: secs,
                from_provider: false,
            });
        }
        if config.enable_debug_logging {
            log::debug!(
                "{}\n{}",
                match endpoint.call {
                    Call::Request => "Sending sideband request to policy provider:",
                    Call::Response => "Sending sideband response request to policy provider:",
                },
                debug::dump_call(
                    &endpoint.path,
                    &endpoint.headers,
                    &config.secret_header_name,
                    payload.as_bytes()
                )
            );
        }
        let call = Dispatch {
            address: &config.sideband_authority,
            headers: endpoint
                .headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect(),
            body: payload.as_bytes(),
            timeout: Duration::from_millis(u64::from(config.connection_timeout_ms)),
        };
        let result = h.dispatch(call).map_err(|reason| Failure::Unreachable {
            call: endpoint.call,
            target: config.sideband_authority.clone(),
            detail: format!("the host refused the call ({reason})"),
        });
        if result.is_err() {
            self.count(
                h,
                Metric::SidebandCalls(endpoint.call, Some(Class::Unreachable)),
            );
        }
        result
    }

    /// A sideband call came back: its result and latency.
    fn count_call<T>(
        &self,
        h: &mut dyn Host,
        call: Call,
        asked: SystemTime,
        result: &Result<T, Failure>,
    ) {
        let class = result.as_ref().err().and_then(Class::of);
        self.count(h, Metric::SidebandCalls(call, class));
        let ms = h
            .now()
            .duration_since(asked)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        self.shared.metrics.record(h, Metric::Latency(call), ms);
    }

    /// A dispatch finished. A reply for a call this request no longer waits
    /// for (it was answered meanwhile) is ignored.
    pub fn on_call_response(&mut self, h: &mut dyn Host, token: u32, body_size: usize) {
        let waiting = match &self.stage {
            Stage::Deciding { token: t, .. }
            | Stage::Upstream { token: t, .. }
            | Stage::Responding { token: t, .. } => *t == token,
            _ => false,
        };
        let Some(config) = self.config.clone().filter(|_| waiting) else {
            return;
        };
        let map = h.header_map(Map::CallResponseHeaders);
        let dispatch_status = map.text(":dispatch_status");
        // A call the host reports as failed is failed, even with a `:status`
        // (a read that timed out mid-body): its body is partial or gone.
        let status = map
            .text(":status")
            .and_then(|s| s.trim().parse::<u16>().ok())
            .filter(|_| decision::dispatch_ok(dispatch_status.as_deref()));
        let body_size = if status.is_some() { body_size } else { 0 };
        let reply = hook::CallReply {
            status,
            dispatch_status: dispatch_status.as_deref(),
            map: &map,
            body_size,
        };
        match std::mem::replace(&mut self.stage, Stage::Start) {
            Stage::Upstream {
                seen,
                sent,
                directives,
                target,
                ..
            } => {
                match hook::after_upstream(h, &config, &seen, &sent, &directives, &target, reply) {
                    Ok((upstream, payload)) => {
                        let asked = h.now();
                        let method = directives.method.clone().unwrap_or(seen.request.method);
                        let endpoint = &config.response_endpoint;
                        match self.call_sideband(h, &config, endpoint, &payload, asked) {
                            Ok(token) => {
                                self.stage = Stage::Responding {
                                    token,
                                    upstream: Box::new(upstream),
                                    method,
                                    asked,
                                }
                            }
                            Err(f) => {
                                self.refused_response(h, &config, &upstream, &method, f, asked)
                            }
                        }
                    }
                    Err(f) => {
                        if let Some(e) = metrics::upstream_error(&f) {
                            self.count(h, Metric::UpstreamErrors(e));
                        }
                        self.fail(h, f)
                    }
                }
            }
            Stage::Deciding {
                seen,
                sent,
                asked,
                gate,
                ..
            } => {
                let outcome = self
                    .checked(h, &config, Call::Request, reply)
                    .and_then(|members| {
                        let literal = sent.body_literal();
                        decision::interpret(&members, &seen.request, literal, self.debug_enabled())
                    });
                self.count_call(h, Call::Request, asked, &outcome);
                let cache_ttl = seen
                    .cache_key
                    .and_then(|_| cached::reply_ttl(&config, &map));
                match outcome {
                    outcome if gate => {
                        if self.gate_decided(h, &config, seen, outcome) == Action::Continue {
                            h.resume_request();
                        }
                    }
                    Err(f) => {
                        if self.refused_decision(h, &config, seen, sent, f, asked)
                            == Action::Continue
                        {
                            h.resume_request();
                        }
                    }
                    Ok(outcome) if config.shadow => {
                        let said = match outcome {
                            RequestOutcome::Allow(_) => Outcome::Allow,
                            RequestOutcome::Deny(_) => Outcome::Deny,
                        };
                        self.outcome(h, said);
                        self.shadow_decided(h, verdict::decision_fields(&outcome), asked);
                        if self.let_through(h, &config, seen, sent, None) == Action::Continue {
                            h.resume_request();
                        }
                    }
                    Ok(outcome) => self.decided(h, &config, seen, sent, outcome, cache_ttl),
                }
            }
            Stage::Responding {
                upstream,
                method,
                asked,
                ..
            } => {
                let outcome = self
                    .checked(h, &config, Call::Response, reply)
                    .and_then(|members| response_hook::client_response(&members, &upstream));
                self.count_call(h, Call::Response, asked, &outcome);
                match outcome {
                    Ok(reply) if config.shadow => {
                        self.shadow_responded(h, Ok(&reply), asked);
                        self.send(h, upstream.unchanged());
                    }
                    Ok(reply) => self.send(h, reply),
                    Err(f) => self.refused_response(h, &config, &upstream, &method, f, asked),
                }
            }
            other => self.stage = other,
        }
    }

    /// A sideband reply's body, read and checked (transport, 429, JSON, 4xx,
    /// 5xx) into its top-level members.
    fn checked(
        &self,
        h: &mut dyn Host,
        config: &Config,
        call: Call,
        reply: hook::CallReply<'_>,
    ) -> Result<Members, Failure> {
        let body = reply.body(h);
        if config.enable_debug_logging {
            let headers: Vec<(String, String)> = reply
                .map
                .iter()
                .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            log::debug!(
                "Received sideband response from policy provider:\n{}",
                debug::dump_reply(reply.status, &headers, &body)
            );
        }
        let retry_after = reply.map.text("retry-after");
        let result = CallResult {
            status: reply.status,
            dispatch_status: reply.dispatch_status,
            retry_after: retry_after.as_deref(),
            body: &body,
        };
        decision::check_reply(call, &config.sideband_authority, result, h.now())
    }

    /// The decision about a chunked request as it would be without a body
    /// (the gate). A deny, or a failure the failure policy denies, answers
    /// now (`Pause`). An allow (or a failure let through) applies its
    /// directives and lets the request go on (`Continue`: the caller resumes
    /// it, or returns it from the step): if a body comes, it is decided again
    /// with the body; if none comes, the host proxies what was allowed.
    fn gate_decided(
        &mut self,
        h: &mut dyn Host,
        config: &Config,
        mut seen: Box<Seen>,
        outcome: Result<RequestOutcome, Failure>,
    ) -> Action {
        let marker = match outcome {
            Ok(RequestOutcome::Deny(reply)) => {
                self.outcome(h, Outcome::Deny);
                self.send(h, reply);
                return Action::Pause;
            }
            Ok(RequestOutcome::Allow(d)) => {
                for w in &d.warnings {
                    log::warn!("{w}");
                }
                if let Err(f) = forward::apply(h, &slots::lines_in(&seen.request.headers), &d) {
                    self.fail(h, f);
                    return Action::Pause;
                }
                self.outcome(h, Outcome::Allow);
                None
            }
            Err(failure) => {
                self.outcome(h, metrics::outcome_of(&failure));
                self.record(h, &failure);
                match config
                    .failure_policy
                    .verdict(&failure, &seen.request.method)
                {
                    Verdict::Deny(reply) => {
                        self.send(h, reply);
                        return Action::Pause;
                    }
                    Verdict::Allow(class) => {
                        log::warn!(
                            "{}",
                            FailurePolicy::fail_open_line(class, &seen.request.method, &failure)
                        );
                        Some(class)
                    }
                }
            }
        };
        forward::mark(
            h,
            &config.failure_policy.marker_header,
            seen.client_markers,
            marker,
        );
        seen.request.body = None;
        self.stage = Stage::AwaitingBody { seen, gated: true };
        Action::Continue
    }

    /// Acts on the policy's decision.
    /// `cache_ttl`: how long the decision may be cached (a cache miss whose
    /// reply allows it).
    fn decided(
        &mut self,
        h: &mut dyn Host,
        config: &Config,
        seen: Box<Seen>,
        sent: Payload,
        outcome: RequestOutcome,
        cache_ttl: Option<u32>,
    ) {
        if let Some(key) = &seen.cache_key {
            self.forget(key);
        }
        let key = seen.cache_key.zip(cache_ttl);
        match outcome {
            RequestOutcome::Deny(reply) => {
                if config.enable_debug_logging {
                    log::debug!(
                        "Request authorization denied by the policy provider, returning status {} to client.",
                        reply.status
                    );
                }
                self.outcome(h, Outcome::Deny);
                if let Some((key, ttl)) = key {
                    self.store_deny(h, key, &reply, ttl);
                }
                self.send(h, reply);
            }
            RequestOutcome::Allow(d) => {
                for w in &d.warnings {
                    log::warn!("{w}");
                }
                if config.enable_debug_logging {
                    for n in &d.notes {
                        log::debug!("{n}");
                    }
                }
                let keep =
                    key.and_then(|k| cached::storable(&d).then(|| (k, cached::cached_allow(&d))));
                match self.proceed(h, config, seen, sent, d, None) {
                    Ok(action) => {
                        self.outcome(h, Outcome::Allow);
                        if let Some(((key, ttl), d)) = keep {
                            self.store_allow(h, key, d, ttl);
                        }
                        if action == Action::Continue {
                            h.resume_request();
                        }
                    }
                    Err(f) => self.fail(h, f),
                }
            }
        }
    }

    /// An allowed request goes on with `d`: with the response hook off the
    /// host proxies it (`Continue`: the caller resumes it, or returns
    /// `Continue` from a request step); with the hook on the filter sends it
    /// upstream itself (`Pause`). `marker`: the class of a request let
    /// through by the failure policy.
    fn proceed(
        &mut self,
        h: &mut dyn Host,
        config: &Config,
        seen: Box<Seen>,
        sent: Payload,
        d: Directives,
        marker: Option<Class>,
    ) -> Result<Action, Failure> {
        if !config.enable_response_hook {
            forward::apply(h, &slots::lines_in(&seen.request.headers), &d)?;
            forward::mark(
                h,
                &config.failure_policy.marker_header,
                seen.client_markers,
                marker,
            );
            self.stage = Stage::Forwarded;
            return Ok(Action::Continue);
        }
        let mut d = d;
        if let Some(class) = marker {
            let name = config.failure_policy.marker_header.clone();
            d.header_ops
                .push(HeaderOp::Set(name, vec![class.name().to_string()]));
        }
        let (token, target) = hook::call_upstream(h, config, &seen, &d)?;
        self.stage = Stage::Upstream {
            token,
            seen,
            sent,
            directives: Box::new(d),
            target,
        };
        Ok(Action::Pause)
    }

    /// The failure policy applied: its log line, its back-off, its reply.
    fn fail(&mut self, h: &mut dyn Host, failure: Failure) {
        self.outcome(h, metrics::outcome_of(&failure));
        self.record(h, &failure);
        let reply = failure.reply();
        // Shadow mode with the response hook: the upstream call failed.
        self.shadow_flush(Some(format!(
            "response_decision=- client_status={}",
            reply.status
        )));
        self.send(h, reply);
    }

    /// Sends a local response, delivered exactly (see [`deliver`]).
    fn send(&mut self, h: &mut dyn Host, reply: Reply) {
        self.stage = Stage::Replied(Delivery::send(h, &reply));
    }

    pub fn on_response_headers(&mut self, h: &mut dyn Host) -> Action {
        match &self.stage {
            Stage::Replied(delivery) => delivery.fix_headers(h),
            // Never saw the request: an earlier filter of the chain answered.
            Stage::Forwarded | Stage::Start => {}
            // A chunked request whose body was empty: the host proxied what
            // the gate allowed. With the response hook the filter cannot run
            // the hook on a response the host fetched itself.
            Stage::AwaitingBody { gated: true, .. } => {
                let enable_hook = self.config.as_ref().is_some_and(|c| c.enable_response_hook);
                if enable_hook {
                    let failure = Failure::ResponseHookSkipped;
                    failure.write_log();
                    self.stage =
                        Stage::Replied(Delivery::replace_upstream_response(h, &failure.reply()));
                } else {
                    self.stage = Stage::Forwarded;
                }
            }
            Stage::AwaitingBody { .. }
            | Stage::Deciding { .. }
            | Stage::Upstream { .. }
            | Stage::Responding { .. }
                if self.shadow() =>
            {
                self.shadow_pass(&Failure::UpstreamBeforeDecision);
            }
            Stage::AwaitingBody { .. }
            | Stage::Deciding { .. }
            | Stage::Upstream { .. }
            | Stage::Responding { .. } => {
                let failure = Failure::UpstreamBeforeDecision;
                failure.write_log();
                self.stage =
                    Stage::Replied(Delivery::replace_upstream_response(h, &failure.reply()));
            }
        }
        Action::Continue
    }

    pub fn on_response_body(&mut self, h: &mut dyn Host, size: usize) -> Action {
        if let Stage::Replied(delivery) = &mut self.stage {
            delivery.on_chunk(h, size);
        }
        Action::Continue
    }
}
