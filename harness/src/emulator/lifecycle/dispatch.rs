//! Dispatch completions: the dispatch resume handler
//! ([`Host::dispatch_done`], `on_http_call_response` then resuming the
//! request), dispatches made from `on_tick`, and cancelling a request's
//! calls.

use super::{guest_i32, id_i32, Host};
use crate::emulator::api::LogLevel;
use crate::emulator::net::SockStatus;
use crate::emulator::state::{Action, CallOwner, Cur, Ecode, EnvState, Phase, Rc, Step};
use crate::emulator::vm::Export;
use std::sync::atomic::Ordering;

impl Host {
    /// The dispatch resume handler: calls `on_http_call_response` (also for
    /// failures, with 0 headers and body), then resumes the request when this
    /// was its last pending dispatch.
    pub(super) fn dispatch_done(&mut self, sid: u64, i: usize, token: u32) {
        let Some(result) = self.ctx().calls.get(&token).and_then(|c| c.result.clone()) else {
            return;
        };
        if let Some(e) = self.stream_mut(sid).and_then(|s| s.pw.execs.get_mut(i)) {
            e.dispatch_ops.retain(|t| *t != token);
        }
        let id = self
            .stream(sid)
            .and_then(|s| s.pw.execs.get(i))
            .map_or(0, |e| e.id);
        let mut failed = false;
        if result.status == SockStatus::Ok {
            if !self.exec_live(sid, i) {
                let (name, n) = self.filter_position(sid, i);
                if let Some(e) = self.stream_mut(sid).and_then(|s| s.pw.execs.get_mut(i)) {
                    e.ecode = Some(Ecode::InstanceTrapped);
                }
                self.log(
                    LogLevel::Error,
                    id,
                    format!(
                        "proxy_wasm \"{name}\" filter ({}/{n}) failed resuming after dispatch",
                        i + 1
                    ),
                );
                failed = true;
                self.log_dispatch_error(id, "");
                let _ = self.invoke_call_response(sid, i, token);
            } else if self.invoke_call_response(sid, i, token).is_err() {
                failed = true;
                self.log_dispatch_error(id, "");
            }
        } else {
            failed = true;
            self.log_dispatch_error(id, &result.error);
            let _ = self.invoke_call_response(sid, i, token);
        }
        if let Some(call) = self.ctx_mut().calls.remove(&token) {
            call.cancel.store(true, Ordering::SeqCst);
        }
        let Some(s) = self.stream_mut(sid) else {
            return;
        };
        let more =
            s.pw.execs
                .get(i)
                .is_some_and(|e| !e.dispatch_ops.is_empty());
        if more {
            s.state = EnvState::Yield;
            s.pw.action = Action::Pause;
            return;
        }
        s.state = EnvState::Continue;
        s.pw.action = Action::Continue;
        let rc = if failed {
            Rc::Error
        } else {
            let (phase, step) = (s.pw.phase, s.pw.step);
            self.pw_resume(sid, phase, step)
        };
        if rc == Rc::Again {
            self.check_stall(sid);
            return;
        }
        self.wev(sid);
    }

    pub(super) fn filter_position(&self, sid: u64, i: usize) -> (String, usize) {
        let n = self.stream(sid).map_or(0, |s| s.pw.execs.len());
        let name = self
            .stream(sid)
            .and_then(|s| s.pw.execs.get(i))
            .and_then(|e| self.ctx().roots.get(e.root))
            .map(|r| r.name.clone())
            .unwrap_or_default();
        (name, n)
    }

    pub(super) fn log_dispatch_error(&mut self, id: u32, error: &str) {
        if !self.ctx().opts.log_dispatch_errors {
            return;
        }
        let msg = if error.is_empty() {
            "dispatch failed".to_string()
        } else {
            format!("dispatch failed: {error}")
        };
        self.log(LogLevel::Error, id, msg);
    }

    /// `invoke_on_http_dispatch_response`.
    pub(super) fn invoke_call_response(
        &mut self,
        sid: u64,
        i: usize,
        token: u32,
    ) -> Result<(), ()> {
        let saved = {
            let Some(s) = self.stream_mut(sid) else {
                return Err(());
            };
            if let Some(e) = s.pw.execs.get_mut(i) {
                e.dispatch_call = Some(token);
            }
            s.pw.phase = Phase::Background;
            s.pw.step
        };
        let ecode = self.run_step(sid, i, Step::DispatchResponse);
        let Some(s) = self.stream_mut(sid) else {
            return Err(());
        };
        if let Some(e) = s.pw.execs.get_mut(i) {
            e.ecode = ecode;
            e.dispatch_call = None;
        }
        if ecode.is_some() {
            return Err(());
        }
        s.pw.step = saved;
        Ok(())
    }

    /// A dispatch made from `on_tick` answered.
    pub(super) fn root_dispatch_done(&mut self, root: usize, token: u32) {
        let result = self.ctx().calls.get(&token).and_then(|c| c.result.clone());
        if let Some(r) = self.ctx_mut().roots.get_mut(root) {
            r.dispatch_ops.retain(|t| *t != token);
        }
        let id = self.ctx().roots.get(root).map_or(0, |r| r.id);
        if let Some(result) = &result {
            if result.status != SockStatus::Ok {
                let e = result.error.clone();
                self.log_dispatch_error(id, &e);
            }
        }
        let live = self.vm.is_live()
            && self
                .ctx()
                .roots
                .get(root)
                .is_some_and(|r| r.started_gen == Some(self.ctx().gen));
        if live {
            let (nh, bl) = result
                .as_ref()
                .map_or((0, 0), |r| (r.headers.len(), r.body_size()));
            if let Some(r) = self.ctx_mut().roots.get_mut(root) {
                r.step = Step::DispatchResponse;
                r.dispatch_call = Some(token);
            }
            let _ = self.vm.call(
                Cur::Root { root },
                Export::OnHttpCallResponse,
                &[id_i32(id), id_i32(token), guest_i32(nh), guest_i32(bl), 0],
            );
            if let Some(r) = self.ctx_mut().roots.get_mut(root) {
                r.step = Step::None;
                r.dispatch_call = None;
            }
        }
        self.ctx_mut().calls.remove(&token);
    }

    /// Cancels the request's calls (those `faults::orphan_calls` kept stay
    /// pending).
    pub(super) fn cancel_calls(&mut self, sid: u64) {
        let tokens: Vec<u32> = self
            .ctx()
            .calls
            .iter()
            .filter(|(_, c)| !c.orphaned)
            .filter(|(_, c)| matches!(c.owner, CallOwner::Http { stream, .. } if stream == sid))
            .map(|(t, _)| *t)
            .collect();
        for t in tokens {
            if let Some(call) = self.ctx_mut().calls.remove(&t) {
                call.cancel.store(true, Ordering::SeqCst);
            }
        }
    }
}
