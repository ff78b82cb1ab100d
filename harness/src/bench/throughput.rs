//! Throughput with concurrent keep-alive clients: the `.wasm` in the emulator
//! behind a socket ([`crate::gateway`]), one worker, `clients` connections
//! each sending its requests one after the other.
//!
//! The figures are the emulator's, not Kong's: they show how the filter and
//! one worker behave under concurrency (no lost request, no host fault, how
//! latency spreads), not the host's capacity, which `docs/performance.md`
//! gives as measured on a real build.

use super::emulated::Servers;
use super::scenarios::{self, Scenario};
use super::stats::{summarize, Summary};
use crate::emulator::{Emulator, FilterEntry, HostOptions, Route, Service};
use crate::gateway::Gateway;
use crate::http::client::Connection;
use anyhow::Context as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// One throughput run.
pub struct Throughput {
    pub key: &'static str,
    pub title: &'static str,
    pub clients: usize,
    pub requests: usize,
    pub elapsed: Duration,
    /// Client-side latency of each request (send to last byte).
    pub latency: Summary,
    /// Requests whose status was not the scenario's.
    pub wrong: usize,
    /// Requests that failed at the connection level.
    pub failed: usize,
    pub traps: u64,
    pub host_faults: u64,
}

impl Throughput {
    pub fn per_second(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Every request answered as expected, no trap, no host fault.
    pub fn clean(&self) -> bool {
        self.wrong == 0 && self.failed == 0 && self.traps == 0 && self.host_faults == 0
    }
}

/// The scenarios timed under load: an allow with the response hook off, the
/// same allow from the decision cache, a deny, and the response hook.
pub const KEYS: [&str; 4] = [
    scenarios::SMALL_GET,
    scenarios::CACHED,
    scenarios::DENY,
    scenarios::HOOK_64K,
];

pub fn run(
    wasm: &Path,
    servers: &Servers,
    sc: &Scenario,
    clients: usize,
    per_client: usize,
) -> anyhow::Result<Throughput> {
    let mut emu = Emulator::new(wasm, HostOptions::default())?;
    let mut service = Service::new(
        "bench-upstream",
        "http",
        "127.0.0.1",
        servers.upstream_port(),
    );
    service.read_timeout = 10_000;
    let mut route = Route::new(&format!("load-{}", sc.key), &["/"]);
    route.strip_path = false;
    let config = scenarios::config(sc, servers.pdp_port()).to_string();
    let chain = emu
        .add_chain(service, route, vec![FilterEntry::new("ping_auth", config)])
        .map_err(|e| anyhow::anyhow!("configuring {}: {e}", sc.key))?;
    let gateway =
        Gateway::start(emu, chain, "127.0.0.1:0", 8000, None).context("starting the gateway")?;
    let addr = gateway.addr();
    let began = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let req = sc.request.clone();
            let expect = sc.expect_status;
            std::thread::spawn(move || {
                let mut times = Vec::with_capacity(per_client);
                let (mut wrong, mut failed) = (0usize, 0usize);
                let Ok(mut conn) = Connection::connect(addr, None, Duration::from_secs(30)) else {
                    return (times, wrong, per_client);
                };
                for _ in 0..per_client {
                    let t = Instant::now();
                    match conn.send(&req.method, &req.target, &req.headers, &req.body) {
                        Ok(resp) => {
                            times.push(t.elapsed());
                            if resp.status != expect {
                                wrong += 1;
                            }
                        }
                        Err(_) => {
                            failed += 1;
                            break;
                        }
                    }
                }
                (times, wrong, failed)
            })
        })
        .collect();
    let mut times = Vec::new();
    let (mut wrong, mut failed) = (0, 0);
    for w in workers {
        let (t, bad, lost) = w
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
        times.extend(t);
        wrong += bad;
        failed += lost;
    }
    let elapsed = began.elapsed();
    let emu = gateway
        .stop()
        .ok_or_else(|| anyhow::anyhow!("the gateway worker did not hand the emulator back"))?;
    let stats = emu.stats();
    Ok(Throughput {
        key: sc.key,
        title: sc.title,
        clients,
        requests: times.len(),
        elapsed,
        latency: summarize(&times),
        wrong,
        failed,
        traps: stats.traps,
        host_faults: stats.host_faults,
    })
}
