//! Chains and root contexts: adding a chain (one root context per filter,
//! started in the order of their ids), starting a root context
//! (`on_context_create`, `on_vm_start`, `on_configure`) and the ticks.

use super::{guest_i32, id_i32, Host};
use crate::emulator::api::{ChainId, ConfigureError, FilterEntry, LogLevel, Route, Service};
use crate::emulator::state::{ChainDef, Cur, RootCtx, Step};
use crate::emulator::vm::{Export, Guest};
use std::time::{Duration, Instant};

impl Host {
    pub fn add_chain(
        &mut self,
        service: Service,
        route: Route,
        filters: Vec<FilterEntry>,
    ) -> Result<ChainId, ConfigureError> {
        let log_start = self.ctx().logs.len();
        let chain = self.ctx().chains.len();
        let mut roots = Vec::new();
        for (index, f) in filters.iter().enumerate() {
            let salt = format!("{chain}:{index}");
            let id = crc32(&[f.name.as_bytes(), &f.config, salt.as_bytes()]);
            let ctx = self.ctx_mut();
            ctx.roots.push(RootCtx {
                name: f.name.clone(),
                config: f.config.clone(),
                id,
                chain,
                index,
                started_gen: None,
                tick_period: 0,
                next_tick: None,
                step: Step::None,
                dispatch_ops: Vec::new(),
                dispatch_call: None,
            });
            roots.push(ctx.roots.len() - 1);
        }
        self.ctx_mut().chains.push(ChainDef {
            service,
            route,
            roots: roots.clone(),
            refused: false,
        });
        // The host starts filters in the order of their ids.
        let mut order = roots.clone();
        order.sort_by_key(|&r| self.ctx().roots.get(r).map_or(0, |x| x.id));
        for r in order {
            if let Err(reason) = self.start_root(r, true) {
                let (name, index) = self
                    .ctx()
                    .roots
                    .get(r)
                    .map(|x| (x.name.clone(), x.index))
                    .unwrap_or_default();
                self.log(
                    LogLevel::Critical,
                    0,
                    format!("failed initializing \"{name}\" filter ({reason})"),
                );
                if let Some(c) = self.ctx_mut().chains.get_mut(chain) {
                    c.refused = true;
                }
                let logs = self
                    .ctx()
                    .logs
                    .get(log_start..)
                    .unwrap_or_default()
                    .to_vec();
                return Err(ConfigureError {
                    entry: index,
                    filter: name,
                    reason,
                    logs,
                });
            }
        }
        Ok(ChainId(chain))
    }

    /// Starts a root context in the current instance (`on_context_create`,
    /// `on_vm_start` when the filter is first started, `on_configure`).
    pub(super) fn start_root(&mut self, root: usize, vm_start: bool) -> Result<(), String> {
        self.vm.ensure_instance()?;
        let gen = self.ctx().gen;
        let Some(r) = self.ctx().roots.get(root) else {
            return Err("unknown filter".to_string());
        };
        if r.started_gen == Some(gen) {
            return Ok(());
        }
        let (id, config_len) = (r.id, r.config.len());
        if let Some(r) = self.ctx_mut().roots.get_mut(root) {
            // A new root context: no tick period yet.
            r.tick_period = 0;
            r.next_tick = None;
        }
        let cur = Cur::Root { root };
        if let Guest::Trap(msg) = self.vm.call(cur, Export::OnContextCreate, &[id_i32(id), 0]) {
            return Err(format!("trap in on_context_create: {msg}"));
        }
        if vm_start {
            match self.vm.call(cur, Export::OnVmStart, &[id_i32(id), 0]) {
                Guest::Trap(msg) => return Err(format!("trap in on_vm_start: {msg}")),
                Guest::Ok(Some(0)) => return Err("on_vm_start returned false".to_string()),
                _ => {}
            }
        }
        match self.vm.call(
            cur,
            Export::OnConfigure,
            &[id_i32(id), guest_i32(config_len)],
        ) {
            Guest::Trap(msg) => return Err(format!("trap in on_configure: {msg}")),
            Guest::Ok(Some(0)) => return Err("on_configure returned false".to_string()),
            _ => {}
        }
        if let Some(r) = self.ctx_mut().roots.get_mut(root) {
            r.started_gen = Some(gen);
        }
        Ok(())
    }

    /// Runs the ticks that are due.
    pub(super) fn run_ticks(&mut self) {
        let now = Instant::now();
        let due: Vec<usize> = self
            .ctx()
            .roots
            .iter()
            .enumerate()
            .filter(|(_, r)| r.tick_period > 0 && r.next_tick.is_some_and(|t| t <= now))
            .map(|(i, _)| i)
            .collect();
        for root in due {
            let refused = self
                .ctx()
                .roots
                .get(root)
                .and_then(|r| self.ctx().chains.get(r.chain))
                .is_some_and(|c| c.refused);
            if refused {
                continue;
            }
            let period = self.ctx().roots.get(root).map_or(0, |r| r.tick_period);
            if self.start_root(root, false).is_err() {
                continue;
            }
            let id = self.ctx().roots.get(root).map_or(0, |r| r.id);
            if let Some(r) = self.ctx_mut().roots.get_mut(root) {
                r.step = Step::Tick;
            }
            let _ = self
                .vm
                .call(Cur::Root { root }, Export::OnTick, &[id_i32(id)]);
            if let Some(r) = self.ctx_mut().roots.get_mut(root) {
                r.step = Step::None;
                let p = if r.tick_period == 0 && period != 0 && r.started_gen.is_some() {
                    0
                } else {
                    r.tick_period
                };
                r.next_tick =
                    (p != 0).then(|| Instant::now() + Duration::from_millis(u64::from(p)));
            }
        }
    }

    pub(super) fn next_tick_in(&self) -> Option<Duration> {
        self.ctx()
            .roots
            .iter()
            .filter(|r| r.tick_period > 0)
            .filter_map(|r| r.next_tick)
            .min()
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
}

/// CRC-32 (IEEE), used for root context ids as the host derives them.
fn crc32(parts: &[&[u8]]) -> u32 {
    let mut crc: u32 = 0xffff_ffff;
    for part in parts {
        for &b in *part {
            crc ^= u32::from(b);
            for _ in 0..8 {
                let mask = (crc & 1).wrapping_neg();
                crc = (crc >> 1) ^ (0xedb8_8320 & mask);
            }
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc() {
        assert_eq!(crc32(&[b"123456789"]), 0xcbf4_3926);
    }
}
