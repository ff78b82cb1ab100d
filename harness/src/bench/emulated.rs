//! The filter in the host emulator: the guest's own time per request, the
//! host calls it makes, and its linear memory.

use super::scenarios::{self, Recorder, Scenario};
use super::server::LoopbackServer;
use super::stats::{summarize, Summary};
use super::Counts;
use crate::emulator::{
    ChainId, ClientResponse, Emulator, FilterEntry, HostOptions, LogLevel, Route, Service,
};
use anyhow::{bail, Context as _};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

/// The policy server and the upstream, on 127.0.0.1.
pub struct Servers {
    pdp: LoopbackServer,
    upstream: LoopbackServer,
    pub recorder: Recorder,
}

impl Servers {
    pub fn start() -> anyhow::Result<Self> {
        let recorder = Recorder::default();
        let rec = recorder.clone();
        let pdp = LoopbackServer::start("pdp", Arc::new(move |r| scenarios::policy(&rec, r)))
            .context("starting the policy server")?;
        let upstream = LoopbackServer::start("upstream", Arc::new(scenarios::upstream))
            .context("starting the upstream")?;
        Ok(Self {
            pdp,
            upstream,
            recorder,
        })
    }

    pub fn pdp_port(&self) -> u16 {
        self.pdp.port()
    }

    pub fn upstream_port(&self) -> u16 {
        self.upstream.port()
    }

    pub fn stop(&mut self) {
        self.pdp.stop();
        self.upstream.stop();
    }
}

/// The scenario's chain: `ping_auth` with the scenario's configuration, or
/// the `filter` given.
fn add_chain(
    emu: &mut Emulator,
    sc: &Scenario,
    servers: &Servers,
    filter: Option<FilterEntry>,
) -> anyhow::Result<ChainId> {
    let mut service = Service::new(
        "bench-upstream",
        "http",
        "127.0.0.1",
        servers.upstream.port(),
    );
    service.connect_timeout = 5_000;
    service.write_timeout = 5_000;
    service.read_timeout = 5_000;
    let mut route = Route::new(&format!("bench-{}", sc.key), &["/"]);
    route.strip_path = false;
    let filter = filter.unwrap_or_else(|| {
        FilterEntry::new(
            "ping_auth",
            scenarios::config(sc, servers.pdp_port()).to_string(),
        )
    });
    emu.add_chain(service, route, vec![filter])
        .map_err(|e| anyhow::anyhow!("configuring {}: {e}", sc.key))
}

/// Refuses to time a scenario that does not do what it should.
fn check_response(sc: &Scenario, resp: &ClientResponse, emu: &Emulator) -> anyhow::Result<()> {
    if resp.status == sc.expect_status && !resp.trapped && !resp.stalled {
        if let Some(e) = &resp.framing_error {
            bail!("{}: framing error: {e}", sc.key);
        }
        return Ok(());
    }
    let logs: Vec<String> = emu
        .logs()
        .iter()
        .rev()
        .take(5)
        .map(|l| format!("[{}] {}", l.level, l.message))
        .collect();
    bail!(
        "{}: expected {}, got {} (trapped: {}, stalled: {}); last log lines: {:?}",
        sc.key,
        sc.expect_status,
        resp.status,
        resp.trapped,
        resp.stalled,
        logs
    )
}

/// Warning and error lines logged, with a few distinct messages.
#[derive(Default)]
pub struct LogNotes {
    pub count: usize,
    pub distinct: BTreeSet<String>,
}

impl LogNotes {
    /// Takes the emulator's log (so that it does not grow over the run).
    fn drain(&mut self, emu: &mut Emulator) {
        for l in emu.take_logs() {
            if l.level >= LogLevel::Warn {
                self.count += 1;
                if self.distinct.len() < 3 {
                    let mut m = l.message;
                    m.truncate(160);
                    self.distinct.insert(format!("[{}] {m}", l.level));
                }
            }
        }
    }
}

/// One scenario in the emulator.
pub struct WasmRun {
    /// The guest's own time per request ([`crate::emulator::HostStats::guest_time`]).
    pub own: Summary,
    /// The part of `own` outside host functions: the module's code alone
    /// ([`crate::emulator::HostStats::code_time`]).
    pub code: Summary,
    /// Time spent starting the emulator's dispatch I/O threads inside guest
    /// calls, per request (left out of `own`).
    pub io_start: Summary,
    /// Host calls per request, by name.
    pub hostcalls: BTreeMap<String, f64>,
    /// Guest calls per request: callbacks and the host's `malloc` calls.
    pub guest_calls: f64,
    pub dispatches: f64,
    pub memory_start: usize,
    pub memory_peak: usize,
    pub logs: LogNotes,
}

/// A fresh emulator (one worker) with the scenario's chain: `warmup`
/// requests, then `requests` timed ones, one at a time.
pub fn run(
    wasm: &Path,
    servers: &Servers,
    sc: &Scenario,
    counts: Counts,
) -> anyhow::Result<WasmRun> {
    run_filter(wasm, servers, sc, counts, None)
}

/// The emulator's own cost per request: the do-nothing filter (`noop`, the
/// `noop-filter` crate) in place of `ping_auth`, on the scenario's request.
pub fn baseline(
    noop: &Path,
    servers: &Servers,
    sc: &Scenario,
    counts: Counts,
) -> anyhow::Result<WasmRun> {
    let run = run_filter(
        noop,
        servers,
        sc,
        counts,
        Some(FilterEntry::new("noop", "")),
    )?;
    if run.hostcalls.values().sum::<f64>() > 0.0 || run.dispatches > 0.0 {
        bail!(
            "the do-nothing filter made host calls ({:?}): it is not a baseline",
            run.hostcalls
        );
    }
    Ok(run)
}

fn run_filter(
    wasm: &Path,
    servers: &Servers,
    sc: &Scenario,
    counts: Counts,
    filter: Option<FilterEntry>,
) -> anyhow::Result<WasmRun> {
    let opts = HostOptions {
        client_body_buffer_size: sc.body_buffer,
        ..HostOptions::default()
    };
    let mut emu = Emulator::new(wasm, opts)?;
    let chain = add_chain(&mut emu, sc, servers, filter)?;
    let memory_start = emu.stats().memory_bytes;
    let mut logs = LogNotes::default();
    for _ in 0..counts.warmup {
        let resp = emu.send(chain, sc.request.clone());
        check_response(sc, &resp, &emu)?;
        logs.drain(&mut emu);
    }
    logs = LogNotes::default();
    emu.reset_stats();
    let mut own = Vec::with_capacity(counts.requests);
    let mut io_start = Vec::with_capacity(counts.requests);
    let mut code = Vec::with_capacity(counts.requests);
    for _ in 0..counts.requests {
        let request = sc.request.clone();
        let before = emu.stats();
        let resp = emu.send(chain, request);
        let after = emu.stats();
        check_response(sc, &resp, &emu)?;
        logs.drain(&mut emu);
        own.push(after.guest_time().saturating_sub(before.guest_time()));
        io_start.push(after.io_start_time.saturating_sub(before.io_start_time));
        code.push(after.code_time().saturating_sub(before.code_time()));
    }
    let total = emu.stats();
    if sc.cache && total.dispatches > 0 {
        bail!(
            "{}: {} timed requests made {} sideband calls: the cache did not answer them",
            sc.key,
            counts.requests,
            total.dispatches
        );
    }
    let n = counts.requests.max(1) as f64;
    Ok(WasmRun {
        own: summarize(&own),
        code: summarize(&code),
        io_start: summarize(&io_start),
        hostcalls: total
            .hostcalls
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64 / n))
            .collect(),
        guest_calls: total.guest_calls as f64 / n,
        dispatches: total.dispatches as f64 / n,
        memory_start,
        memory_peak: total.memory_bytes,
        logs,
    })
}

/// Linear memory at two points of a long run.
pub struct Growth {
    pub at_checkpoint: usize,
    pub at_end: usize,
    pub checkpoint: usize,
    pub total: usize,
}

impl Growth {
    pub fn bytes(&self) -> usize {
        self.at_end.saturating_sub(self.at_checkpoint)
    }
}

/// One emulator (one worker, one instance) serving every scenario in turn,
/// as a worker serves many routes: memory after `growth_checkpoint` requests
/// and after `growth_total`.
pub fn memory_growth(
    wasm: &Path,
    servers: &Servers,
    all: &[Scenario],
    counts: Counts,
) -> anyhow::Result<Growth> {
    let opts = HostOptions {
        client_body_buffer_size: scenarios::LARGE_BODY_BUFFER,
        ..HostOptions::default()
    };
    let mut emu = Emulator::new(wasm, opts)?;
    let mut chains = Vec::new();
    for sc in all {
        chains.push((add_chain(&mut emu, sc, servers, None)?, sc));
    }
    let mut at_checkpoint = 0;
    for i in 0..counts.growth_total {
        if i == counts.growth_checkpoint {
            at_checkpoint = emu.stats().memory_bytes;
        }
        let Some((chain, sc)) = chains.get(i % chains.len()) else {
            bail!("no scenarios");
        };
        let resp = emu.send(*chain, sc.request.clone());
        check_response(sc, &resp, &emu)?;
        emu.take_logs();
    }
    Ok(Growth {
        at_checkpoint,
        at_end: emu.stats().memory_bytes,
        checkpoint: counts.growth_checkpoint,
        total: counts.growth_total,
    })
}
