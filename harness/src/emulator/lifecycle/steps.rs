//! Chain stepping, as ngx_proxy_wasm does it: `ngx_proxy_wasm_resume`
//! ([`Host::pw_resume`]), `action2rc` ([`Host::action2rc`]),
//! `ngx_proxy_wasm_run_step` ([`Host::run_step`]) and the creation of a
//! filter's HTTP context (again in a fresh instance after a trap).

use super::{guest_i32, id_i32, Host};
use crate::emulator::api::LogLevel;
use crate::emulator::maps;
use crate::emulator::state::{Action, Cur, Ecode, EnvState, Phase, Rc, Step};
use crate::emulator::vm::{Export, Guest};

impl Host {
    /// Whether the exec's context lives in the current, untrapped instance.
    pub(super) fn exec_live(&self, sid: u64, i: usize) -> bool {
        let ctx = self.ctx();
        !ctx.trapped
            && ctx
                .streams
                .get(&sid)
                .and_then(|s| s.pw.execs.get(i))
                .is_some_and(|e| e.started_gen == Some(ctx.gen))
    }

    /// `ngx_proxy_wasm_create_context` for an HTTP context: a new instance
    /// if needed, the root context (again, without `on_vm_start`), then
    /// `on_context_create` for the HTTP context.
    pub(super) fn create_http_context(&mut self, sid: u64, i: usize) -> Result<(), Ecode> {
        let Some(root) = self
            .stream(sid)
            .and_then(|s| s.pw.execs.get(i))
            .map(|e| e.root)
        else {
            return Err(Ecode::Unknown);
        };
        if let Err(reason) = self.start_root(root, false) {
            let name = self
                .ctx()
                .roots
                .get(root)
                .map(|r| r.name.clone())
                .unwrap_or_default();
            self.log(
                LogLevel::Error,
                0,
                format!("\"{name}\" filter could not start its root context: {reason}"),
            );
            return Err(Ecode::StartFailed);
        }
        let gen = self.ctx().gen;
        let root_id = self.ctx().roots.get(root).map_or(0, |r| r.id);
        let Some(id) = self
            .stream(sid)
            .and_then(|s| s.pw.execs.get(i))
            .map(|e| e.id)
        else {
            return Err(Ecode::Unknown);
        };
        let cur = Cur::Http {
            stream: sid,
            exec: i,
        };
        if let Guest::Trap(_) =
            self.vm
                .call(cur, Export::OnContextCreate, &[id_i32(id), id_i32(root_id)])
        {
            return Err(Ecode::StartFailed);
        }
        if let Some(e) = self.stream_mut(sid).and_then(|s| s.pw.execs.get_mut(i)) {
            e.started_gen = Some(gen);
        }
        Ok(())
    }

    /// `ngx_proxy_wasm_resume`: runs `step` for the filters from
    /// `exec_index` on, stopping at the first that pauses or failed.
    pub(super) fn pw_resume(&mut self, sid: u64, phase: Phase, step: Step) -> Rc {
        let Some(s) = self.stream_mut(sid) else {
            return Rc::Error;
        };
        s.pw.phase = phase;
        s.pw.step = step;
        match step {
            Step::Tick | Step::Done | Step::RespBody | Step::DispatchResponse => {}
            Step::RespHeaders => {
                if s.pw.last_completed < Step::RespHeaders {
                    s.pw.exec_index = 0;
                }
            }
            _ => {
                if step <= s.pw.last_completed {
                    return Rc::Ok;
                }
            }
        }
        let n = s.pw.execs.len();
        let mut rc = Rc::Ok;
        let mut i = s.pw.exec_index;
        while i < n {
            rc = self.action2rc(sid, i);
            if rc != Rc::Ok {
                break;
            }
            if step == Step::Done && !self.exec_live(sid, i) {
                rc = Rc::Ok;
                break;
            }
            let ecode = self.run_step(sid, i, step);
            let Some(s) = self.stream_mut(sid) else {
                return Rc::Error;
            };
            if let Some(e) = s.pw.execs.get_mut(i) {
                e.ecode = ecode;
            }
            if ecode.is_some() {
                rc = Rc::Status500;
                break;
            }
            match s.pw.action {
                Action::Continue | Action::Done => s.pw.exec_index += 1,
                Action::Pause => {
                    // Response body buffering re-enters the same filter.
                    if step != Step::RespBody {
                        s.pw.exec_index += 1;
                    }
                }
                Action::Other(_) => {}
            }
            rc = self.action2rc(sid, i);
            if rc != Rc::Ok && rc != Rc::Again {
                break;
            }
            if let Some(s) = self.stream_mut(sid) {
                if s.pw.exec_index >= n {
                    s.pw.last_completed = s.pw.step;
                    s.pw.exec_index = 0;
                }
            }
            i += 1;
        }
        rc
    }

    /// `action2rc`: what the chain's action means in the current phase.
    pub(super) fn action2rc(&mut self, sid: u64, i: usize) -> Rc {
        let Some(s) = self.stream(sid) else {
            return Rc::Error;
        };
        let step = s.pw.step;
        let ecode = s.pw.execs.get(i).and_then(|e| e.ecode);
        if ecode.is_some() {
            let logged = s.pw.execs.get(i).is_some_and(|e| e.ecode_logged);
            if !logged && step != Step::Done {
                let id = s.pw.execs.get(i).map_or(0, |e| e.id);
                self.log(
                    LogLevel::Info,
                    id,
                    "filter chain failed resuming: previous error",
                );
                if let Some(e) = self.stream_mut(sid).and_then(|s| s.pw.execs.get_mut(i)) {
                    e.ecode_logged = true;
                }
            }
            return Rc::Status500;
        }
        if step == Step::Done {
            return Rc::Ok;
        }
        let (action, phase, override_) = (s.pw.action, s.pw.phase, s.resp_chunk_override);
        let exec_index = s.pw.exec_index;
        let id = s.pw.execs.get(i).map_or(0, |e| e.id);
        match action {
            Action::Done => {
                if let Some(s) = self.stream_mut(sid) {
                    s.pw.action = Action::Continue;
                }
                Rc::Done
            }
            Action::Continue => Rc::Ok,
            Action::Pause => match phase {
                Phase::HeaderFilter => {
                    if !override_ {
                        self.log(
                            LogLevel::Warn,
                            id,
                            "\"ResponseHeaders\" returned \"PAUSE\": local response expected but none produced",
                        );
                    }
                    Rc::Again
                }
                Phase::BodyFilter => {
                    if let Some(s) = self.stream_mut(sid) {
                        s.resp_buffering = true;
                    }
                    Rc::Again
                }
                Phase::Access | Phase::Content | Phase::Background => Rc::Again,
                Phase::Log | Phase::Done => {
                    self.log(
                        LogLevel::Error,
                        id,
                        format!("bad \"{}\" return action: \"PAUSE\"", step.host_name()),
                    );
                    if let Some(s) = self.stream_mut(sid) {
                        if let Some(e) = s.pw.execs.get_mut(exec_index) {
                            e.ecode = Some(Ecode::ReturnAction);
                        }
                        if let Some(e) = s.pw.execs.get_mut(i) {
                            e.ecode.get_or_insert(Ecode::Unknown);
                        }
                    }
                    Rc::Error
                }
            },
            Action::Other(v) => {
                self.log(
                    LogLevel::Warn,
                    id,
                    format!("NYI - \"{}\" return action: {v}", step.host_name()),
                );
                if let Some(e) = self.stream_mut(sid).and_then(|s| s.pw.execs.get_mut(i)) {
                    e.ecode.get_or_insert(Ecode::Unknown);
                }
                Rc::Error
            }
        }
    }

    /// `ngx_proxy_wasm_run_step`: one filter's callback for `step`.
    pub(super) fn run_step(&mut self, sid: u64, i: usize, step: Step) -> Option<Ecode> {
        if !self.exec_live(sid, i) {
            if let Err(e) = self.create_http_context(sid, i) {
                return Some(e);
            }
        }
        let Some(s) = self.stream_mut(sid) else {
            return Some(Ecode::Unknown);
        };
        s.pw.step = step;
        let old_action = s.pw.action;
        let mut action = old_action;
        let prev_ecode = s.pw.execs.get(i).and_then(|e| e.ecode);
        let (id, root) = match s.pw.execs.get(i) {
            Some(e) => (e.id, e.root),
            None => return Some(Ecode::Unknown),
        };
        let cur = Cur::Http {
            stream: sid,
            exec: i,
        };
        let id32 = id_i32(id);
        let guest = match step {
            Step::ReqHeaders => {
                let n = s.req.headers.len();
                let g = self
                    .vm
                    .call(cur, Export::OnRequestHeaders, &[id32, guest_i32(n), 0]);
                if let Guest::Ok(Some(v)) = g {
                    action = Action::from_guest(v);
                }
                g
            }
            Step::ReqBody => {
                let len = s.pw.req_body_len;
                let g = self
                    .vm
                    .call(cur, Export::OnRequestBody, &[id32, guest_i32(len), 1]);
                if let Guest::Ok(Some(v)) = g {
                    action = Action::from_guest(v);
                }
                g
            }
            Step::RespHeaders => {
                let n = s.resp.headers.len() + maps::shims(s).len();
                s.resp_content_length_n = s.resp.content_length_n;
                let g = self
                    .vm
                    .call(cur, Export::OnResponseHeaders, &[id32, guest_i32(n), 0]);
                if let Guest::Ok(Some(v)) = g {
                    action = Action::from_guest(v);
                }
                g
            }
            Step::RespBody => {
                let len = s.resp_chunk.as_ref().map_or(0, |c| c.data.len());
                if s.resp_content_length_n > 0 {
                    s.resp_chunk_eof = i64::try_from(len).unwrap_or(-1) == s.resp_content_length_n;
                }
                let eof = s.resp_chunk_eof;
                let buffered = s.resp_bufs.is_some();
                if len > 0 || eof {
                    let g = self.vm.call(
                        cur,
                        Export::OnResponseBody,
                        &[id32, guest_i32(len), i32::from(eof)],
                    );
                    if let Guest::Ok(Some(v)) = g {
                        action = Action::from_guest(v);
                        if action == Action::Pause && buffered {
                            self.log(
                                LogLevel::Error,
                                id,
                                "invalid \"on_response_body\" return action (PAUSE): response body buffering already requested",
                            );
                            action = Action::Continue;
                        }
                    }
                    g
                } else {
                    Guest::Ok(None)
                }
            }
            Step::Log => {
                let _ = self.vm.call(cur, Export::OnDone, &[id32]);
                let _ = self.vm.call(cur, Export::OnLog, &[id32]);
                Guest::Ok(None)
            }
            Step::Done => {
                let _ = self.vm.call(cur, Export::OnDelete, &[id32]);
                Guest::Ok(None)
            }
            Step::DispatchResponse => {
                let token = s.pw.execs.get(i).and_then(|e| e.dispatch_call).unwrap_or(0);
                s.state = EnvState::Continue;
                let (nh, bl) = self
                    .ctx()
                    .calls
                    .get(&token)
                    .and_then(|c| c.result.as_ref())
                    .map_or((0, 0), |r| (r.headers.len(), r.body_size()));
                let root_id = self.ctx().roots.get(root).map_or(0, |r| r.id);
                self.vm.call(
                    cur,
                    Export::OnHttpCallResponse,
                    &[
                        id_i32(root_id),
                        id_i32(token),
                        guest_i32(nh),
                        guest_i32(bl),
                        0,
                    ],
                )
            }
            Step::None | Step::Tick => Guest::Ok(None),
        };
        let Some(s) = self.stream_mut(sid) else {
            return Some(Ecode::Unknown);
        };
        // Actions written by host functions win over the returned one,
        // except a local response's DONE which skips the rest.
        if s.pw.action != action {
            if s.pw.action == Action::Done {
                return prev_ecode;
            }
            s.pw.action = action;
        }
        match guest {
            Guest::Trap(_) => Some(Ecode::InstanceTrapped),
            _ => None,
        }
    }
}
