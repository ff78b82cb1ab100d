//! A proxy-wasm host on Wasmtime that behaves like Kong's Wasm host
//! (Kong/ngx_wasm_module inside Kong 3.9/3.10).
//!
//! One [`Emulator`] is one nginx worker: one Wasm instance (one Wasmtime
//! store) holds every chain's root contexts and every request's HTTP
//! contexts. Network I/O (dispatch calls, proxying to the service) runs on
//! helper threads; results are handed back to the Wasm instance only from
//! [`Emulator::run_until_idle`], [`Emulator::deliver_next`],
//! [`Emulator::finish`] and [`Emulator::send`], on the caller's thread.
//!
//! What is emulated, and what is not, is listed in `docs/emulator.md`. The
//! behaviour follows `host-observed.md` and the host's source; where the
//! two differ, `host-observed.md` wins.
//!
//! Module map (each module imports only modules listed below it, or none):
//! - [`lifecycle`]: the request state machine (steps, actions, bodies,
//!   local responses, dispatch completions), one file per phase.
//! - [`vm`]: Wasmtime engine, module, instances and guest calls.
//! - [`abi`]: the proxy-wasm host functions (`env.proxy_*`), one file per
//!   family of host functions.
//! - [`wasi`]: the 15 WASI functions Kong provides.
//! - [`guest_mem`]: guest memory access for host functions, with the host's
//!   checks.
//! - [`properties`]: `get_property` / `set_property`, nginx variables and
//!   Kong's `kong.*` properties.
//! - [`maps`]: the header maps a filter sees (pseudo-headers, shims).
//! - [`builtins`]: how the host changes request and response headers: its
//!   handler tables, builtin header slots, `Connection`, `Content-Length`.
//! - [`faults`]: host faults (defects that crash the worker): body chains
//!   and the connection pool, what is lost when the worker dies.
//! - [`state`]: the data the host keeps per worker, root context and request.
//! - [`metrics`]: the metrics shared memory (ids, kinds, log2 histograms,
//!   the zone's slab memory, the key order).
//! - `prometheus`: the metrics as Kong's Prometheus plugin writes them
//!   (feature `prometheus`).
//! - [`net`]: the blocking HTTP/1.1 client used for dispatches and upstreams,
//!   and the completions it sends back.
//! - [`kong`]: Kong's routing, proxying variables, headers and error pages.
//! - [`headers`]: nginx-style header lists (with nginx's builtin header
//!   slots), the proxy-wasm map format and the map operations.
//! - [`api`]: the public types ([`HostOptions`], [`ClientRequest`],
//!   [`ClientResponse`], ...), re-exported here.

mod abi;
mod api;
mod builtins;
mod faults;
mod guest_mem;
mod headers;
mod kong;
mod lifecycle;
mod maps;
mod metrics;
mod net;
#[cfg(feature = "prometheus")]
mod prometheus;
mod properties;
mod script;
mod state;
mod vm;
mod wasi;

pub use api::{
    BodyMode, ChainId, ClientRequest, ClientResponse, ConfigureError, FilterEntry, HostOptions,
    HostStats, HttpVersion, LabelPattern, LogLevel, LogRecord, MetricKind, MetricReading,
    MetricValue, Route, Service, StreamId,
};
#[cfg(feature = "prometheus")]
pub use prometheus::render as render_prometheus;
pub use script::{CallAnswer, CallFailure, Network, Outgoing, UpstreamAnswer};
#[cfg(feature = "prometheus")]
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The emulated worker. See the module documentation.
pub struct Emulator {
    host: lifecycle::Host,
}

impl Emulator {
    /// Compiles and instantiates the module (running `_initialize` or
    /// `_start`). A module importing anything the host does not provide
    /// fails here, as it fails to load in Kong. `on_vm_start` runs per root
    /// context when a chain is added, as Kong does when it loads a
    /// filter-chain plan.
    pub fn new(wasm: &Path, opts: HostOptions) -> anyhow::Result<Self> {
        Ok(Self {
            host: lifecycle::Host::new(wasm, opts)?,
        })
    }

    /// Adds a Kong route + service with its filter chain: each entry gets a
    /// root context (`proxy_on_context_create`, `on_vm_start`,
    /// `on_configure`).
    pub fn add_chain(
        &mut self,
        service: Service,
        route: Route,
        filters: Vec<FilterEntry>,
    ) -> Result<ChainId, ConfigureError> {
        self.host.add_chain(service, route, filters)
    }

    /// Runs a whole request (blocking, bounded by the socket timeouts).
    pub fn send(&mut self, chain: ChainId, req: ClientRequest) -> ClientResponse {
        let id = self.start(chain, req);
        self.finish(id)
    }

    /// Runs the request until it pauses (waiting for I/O) or completes.
    pub fn start(&mut self, chain: ChainId, req: ClientRequest) -> StreamId {
        self.host.start(chain, req)
    }

    /// Delivers completed I/O as callbacks, in completion order, until
    /// nothing is in flight or `timeout` passes. Also runs due ticks.
    pub fn run_until_idle(&mut self, timeout: Duration) {
        self.host.run_until_idle(timeout)
    }

    /// Delivers exactly one completion (waiting up to `timeout`); returns the
    /// request it belonged to.
    pub fn deliver_next(&mut self, timeout: Duration) -> Option<StreamId> {
        self.host.deliver_next(timeout)
    }

    /// Drives this request to completion and returns the response.
    pub fn finish(&mut self, id: StreamId) -> ClientResponse {
        self.host.finish(id)
    }

    /// Whether the request has completed (its response is ready).
    pub fn is_complete(&self, id: StreamId) -> bool {
        self.host.is_complete(id)
    }

    pub fn logs(&self) -> &[LogRecord] {
        self.host.logs()
    }

    pub fn take_logs(&mut self) -> Vec<LogRecord> {
        self.host.take_logs()
    }

    pub fn stats(&self) -> HostStats {
        self.host.stats()
    }

    pub fn reset_stats(&mut self) {
        self.host.reset_stats()
    }

    /// Answers every later dispatch and upstream request with `network`
    /// instead of sockets (`None`: sockets again). See [`script`].
    pub fn set_network(&mut self, network: Option<Arc<dyn Network>>) {
        self.host.set_network(network)
    }

    /// Every metric of the metrics shared memory, as the host reads it
    /// (kind, value, histogram bins and sum), in the host's key order (the
    /// order Kong's Prometheus plugin lists them in). The metrics outlive
    /// traps and crashes of the worker, as the host's shared memory does.
    pub fn metrics(&self) -> Vec<MetricReading> {
        self.host.metrics().readings()
    }

    /// The metric stored as `name`, the prefixed name
    /// (`pw:<filter>:<name>`).
    pub fn metric(&self, name: &str) -> Option<MetricReading> {
        self.host.metrics().get(metrics::crc32(name.as_bytes()))
    }

    /// The metrics as Kong's Prometheus plugin exports them (see
    /// [`render_prometheus`]); `label_patterns` maps a filter name to its
    /// `meta.json` `metrics.label_patterns`
    /// ([`LabelPattern::from_meta_json`]). Needs the `prometheus` feature.
    #[cfg(feature = "prometheus")]
    pub fn prometheus_metrics(
        &self,
        label_patterns: &BTreeMap<String, Vec<LabelPattern>>,
    ) -> anyhow::Result<String> {
        prometheus::render(&self.metrics(), label_patterns)
    }
}
