//! The public types of the emulator: host settings, Kong entities, the
//! client's requests and responses, log records, ids, errors and counters.
//! [`super::Emulator`] takes and returns them; the host's own modules use
//! them too (this module depends on none of them).

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Host settings; [`Default`] gives Kong's defaults.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// `true`: Kong semantics (`kong.*` properties, Kong proxying through
    /// `ngx.upstream_uri` / `ngx.upstream_host`, Kong's headers and error
    /// pages). `false`: plain ngx_wasm_module in nginx (no `kong.*`
    /// properties; the upstream path comes from `:path`, the Host header
    /// from the `host` request header).
    pub kong: bool,
    /// nginx `client_body_buffer_size` (Kong: 8k). Larger bodies are spooled
    /// to a file: `on_http_request_body` still runs with the size, but
    /// `get_http_request_body` finds nothing.
    pub client_body_buffer_size: usize,
    /// `wasm_response_body_buffers` (number, size); default `4 4096`.
    pub response_body_buffers: (usize, usize),
    /// How an upstream body is cut into `on_http_response_body` calls.
    pub upstream_chunk_size: usize,
    /// `wasm { tls_verify_cert }` (on in Kong).
    pub tls_verify_cert: bool,
    /// `wasm { tls_verify_host }` (on in Kong).
    pub tls_verify_host: bool,
    /// `wasm { tls_trusted_certificate }`: a CA bundle (PEM). No system
    /// store is ever loaded: with verification on and no CA, every TLS
    /// dispatch fails with `tls handshake failure`.
    pub tls_trusted_certificate: Option<PathBuf>,
    /// `wasm_socket_{connect,send,read}_timeout`, used when a dispatch
    /// passes a timeout of 0 (60 s).
    pub socket_timeout: Duration,
    /// `kong.version` and the `Server` / `Via` tokens.
    pub kong_version: String,
    /// nginx `server_name` of the listener (Kong: `kong`); `:authority` is
    /// `<server_name>:<port>`.
    pub server_name: String,
    /// `proxy_wasm_log_dispatch_errors` (on by default).
    pub log_dispatch_errors: bool,
    /// Longest time one guest call may run before the emulator interrupts it
    /// (a safety net: the real host has no limit).
    pub guest_call_limit: Duration,
    /// `KONG_NGINX_WASM_SHM_KV` is set: `proxy_get/set_shared_data` work.
    /// Off by default, as in Kong, where they then trap.
    pub shm_kv: bool,
    /// Kong's `trusted_ips`: clients whose `X-Forwarded-Proto/Host/Port`
    /// Kong believes (`kong.request.forwarded_*`). Empty by default, as in Kong.
    pub trusted_ips: Vec<std::net::IpAddr>,
    /// `wasm { metrics { slab_size } }`: the size of the metrics shared
    /// memory zone (5 MiB, the module's default; Kong does not change it).
    /// At least 3 pages of 4096 bytes and a multiple of 4096, as the
    /// directive requires. See `docs/emulator.md` (Metrics).
    pub metrics_slab_size: usize,
    /// `wasm { metrics { max_metric_name_length } }` (256; at least 6): the
    /// longest prefixed name (`pw:<filter>:<name>`) a filter may define.
    pub metrics_max_name_length: usize,
    /// nginx `worker_processes`. The emulator is worker 0 of them; the
    /// number only sizes the metrics memory (every metric keeps one value
    /// slot per worker). Kong's default is `auto` (one per CPU); 1 here.
    pub worker_processes: usize,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            kong: true,
            client_body_buffer_size: 8192,
            response_body_buffers: (4, 4096),
            upstream_chunk_size: 4096,
            tls_verify_cert: true,
            tls_verify_host: true,
            tls_trusted_certificate: None,
            socket_timeout: Duration::from_secs(60),
            kong_version: "3.9.3".to_string(),
            server_name: "kong".to_string(),
            log_dispatch_errors: true,
            guest_call_limit: Duration::from_secs(10),
            shm_kv: false,
            trusted_ips: Vec::new(),
            metrics_slab_size: 5 * 1024 * 1024,
            metrics_max_name_length: 256,
            worker_processes: 1,
        }
    }
}

/// A Kong Service entity.
#[derive(Clone, Debug)]
pub struct Service {
    pub name: String,
    pub id: String,
    /// `http` or `https`.
    pub protocol: String,
    pub host: String,
    pub port: u16,
    pub path: Option<String>,
    /// Milliseconds, as in Kong.
    pub connect_timeout: u64,
    pub write_timeout: u64,
    pub read_timeout: u64,
}

impl Service {
    /// A service with Kong's default timeouts (60 s).
    pub fn new(name: &str, protocol: &str, host: &str, port: u16) -> Self {
        Self {
            name: name.to_string(),
            id: uuid_from(name.as_bytes(), 0x5e),
            protocol: protocol.to_string(),
            host: host.to_string(),
            port,
            path: None,
            connect_timeout: 60_000,
            write_timeout: 60_000,
            read_timeout: 60_000,
        }
    }
}

/// A Kong Route entity (prefix paths only).
#[derive(Clone, Debug)]
pub struct Route {
    pub name: String,
    pub id: String,
    pub paths: Vec<String>,
    pub strip_path: bool,
    pub preserve_host: bool,
}

impl Route {
    /// A route with Kong's defaults (`strip_path = true`, `preserve_host = false`).
    pub fn new(name: &str, paths: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            id: uuid_from(name.as_bytes(), 0x70),
            paths: paths.iter().map(|p| p.to_string()).collect(),
            strip_path: true,
            preserve_host: false,
        }
    }
}

/// One filter of a chain: its own root context and `on_configure`.
#[derive(Clone, Debug)]
pub struct FilterEntry {
    pub name: String,
    pub config: Vec<u8>,
}

impl FilterEntry {
    pub fn new(name: &str, config: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.to_string(),
            config: config.into(),
        }
    }
}

/// HTTP version of the client connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    Http10,
    Http11,
    Http2,
}

/// How the client frames its request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyMode {
    /// `Content-Length` is added when the body is non-empty (unless the
    /// headers already carry one).
    ContentLength,
    /// `Transfer-Encoding: chunked` (the body may be empty).
    Chunked,
    /// No length header (HTTP/2 style).
    NoLength,
}

/// A request as a client sends it to Kong.
#[derive(Clone, Debug)]
pub struct ClientRequest {
    pub method: String,
    /// The raw request-target, e.g. `/a/b?x=1`.
    pub target: String,
    pub version: HttpVersion,
    /// As sent (mixed case kept on HTTP/1.x).
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
    pub body_mode: BodyMode,
    pub client_addr: SocketAddr,
    pub tls: bool,
    /// The Kong listener port, e.g. 8000.
    pub server_port: u16,
    /// Served as `ngx.ssl_client_raw_cert`.
    pub client_cert_pem: Option<String>,
    /// The client connection the request arrives on. Requests with the same
    /// id are successive keep-alive requests on one connection (nginx keeps
    /// per-connection state between them); `None`: a connection of its own.
    pub connection: Option<u64>,
}

impl ClientRequest {
    /// `GET <target>` over HTTP/1.1 with `Host: example.com`, from 127.0.0.1.
    pub fn get(target: &str) -> Self {
        Self {
            method: "GET".to_string(),
            target: target.to_string(),
            version: HttpVersion::Http11,
            headers: vec![("Host".to_string(), b"example.com".to_vec())],
            body: Vec::new(),
            body_mode: BodyMode::ContentLength,
            client_addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
            tls: false,
            server_port: 8000,
            client_cert_pem: None,
            connection: None,
        }
    }

    /// `POST <target>` with a body (Content-Length).
    pub fn post(target: &str, body: &[u8]) -> Self {
        let mut req = Self::get(target);
        req.method = "POST".to_string();
        req.body = body.to_vec();
        req
    }

    /// Adds a header (builder style).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_string(), value.as_bytes().to_vec()));
        self
    }
}

/// What the client receives.
#[derive(Clone, Debug, Default)]
pub struct ClientResponse {
    /// 0 when no response came at all: [`ClientResponse::stalled`] or
    /// [`ClientResponse::host_fault`].
    pub status: u16,
    /// Header lines as sent to the client, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body as the client reads it (de-chunked; cut to Content-Length).
    pub body: Vec<u8>,
    /// Produced by `send_http_response`.
    pub local: bool,
    /// How many times Kong itself proxied upstream for this request.
    pub upstream_requests: usize,
    /// A guest call trapped while this request was processed.
    pub trapped: bool,
    /// The request never completed: the host left it paused with nothing
    /// pending (a real client would time out).
    pub stalled: bool,
    /// The bytes sent disagree with the announced `Content-Length` (a real
    /// client would read a truncated body or wait for missing bytes).
    pub framing_error: Option<String>,
    /// The worker process crashed while this request was in flight (an
    /// emulated host fault: a defect of the real host that the filter
    /// triggered, see `docs/emulator.md`): the client's connection was
    /// reset, there is no response (`status` 0). The text is the crash's
    /// log line. Every request in flight in the worker is lost with it.
    pub host_fault: Option<String>,
}

impl ClientResponse {
    /// First header value (case-insensitive), as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Every value of a header, as text.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// proxy-wasm log levels (nginx levels in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// `[debug]` (trace and debug).
    Trace,
    Debug,
    /// `[info]`
    Info,
    /// `[warn]`
    Warn,
    /// `[error]`
    Error,
    /// `[crit]`
    Critical,
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            LogLevel::Trace | LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
            LogLevel::Critical => "crit",
        };
        f.write_str(s)
    }
}

/// One line of the (emulated) error log. Lines written by the filter with
/// `proxy_log` carry the context id; lines the host writes itself carry the
/// context id of the filter concerned, or 0.
#[derive(Clone, Debug)]
pub struct LogRecord {
    pub level: LogLevel,
    pub message: String,
    pub context_id: u32,
    /// `true` for lines written by the filter (`proxy_log`, `fd_write`).
    pub from_filter: bool,
}

/// Identifies a chain added with
/// [`Emulator::add_chain`](super::Emulator::add_chain).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChainId(pub usize);

/// Identifies a request started with
/// [`Emulator::start`](super::Emulator::start).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// Why [`Emulator::add_chain`](super::Emulator::add_chain) refused a chain
/// (Kong would fail to load the filter-chain plan and keep or reject the
/// configuration).
#[derive(Clone, Debug)]
pub struct ConfigureError {
    /// Index in the chain of the entry that failed.
    pub entry: usize,
    pub filter: String,
    /// What failed: `on_configure returned false`, a trap, ...
    pub reason: String,
    /// Log lines written while the chain was being configured.
    pub logs: Vec<LogRecord>,
}

impl fmt::Display for ConfigureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "filter #{} \"{}\" failed: {}",
            self.entry, self.filter, self.reason
        )
    }
}

impl std::error::Error for ConfigureError {}

/// Counters and timings since creation or the last
/// [`Emulator::reset_stats`](super::Emulator::reset_stats).
#[derive(Clone, Debug, Default)]
pub struct HostStats {
    /// Host calls made by the filter, per import name.
    pub hostcalls: BTreeMap<String, u64>,
    /// Time spent inside guest calls (includes host functions they call).
    pub wasm_time: Duration,
    /// The part of `wasm_time` spent in `dispatch_http_call` starting the
    /// emulator's I/O thread for the call: an artefact of the emulator (Kong's
    /// host starts a non-blocking connect instead). See [`HostStats::guest_time`].
    pub io_start_time: Duration,
    /// The part of `wasm_time` spent inside host functions (the emulator's
    /// stand-ins for Kong's C host, `io_start_time` included), timed by a
    /// Wasmtime call hook. See [`HostStats::code_time`].
    pub host_fn_time: Duration,
    /// Time the caller spent waiting for network completions.
    pub io_wait_time: Duration,
    /// Current linear memory size in bytes.
    pub memory_bytes: usize,
    /// Wasm instances created (1 + one per trap that needed a new one).
    pub instances_created: u64,
    pub traps: u64,
    /// Guest calls made (callbacks, allocations).
    pub guest_calls: u64,
    pub dispatches: u64,
    pub upstream_requests: u64,
    /// Emulated host faults: times the worker process crashed (each loses
    /// every request in flight, see [`ClientResponse::host_fault`]). Should
    /// always be 0.
    pub host_faults: u64,
}

impl HostStats {
    /// The guest's own work: `wasm_time` without `io_start_time`, i.e. time
    /// inside guest calls, host functions included, emulator I/O excluded.
    /// For one request, take the difference between snapshots taken before
    /// and after it (requests run one at a time).
    pub fn guest_time(&self) -> Duration {
        self.wasm_time.saturating_sub(self.io_start_time)
    }

    /// The guest's code alone: `wasm_time` without any host function, i.e.
    /// the instructions of the module (and Wasmtime's entry and exit).
    pub fn code_time(&self) -> Duration {
        self.wasm_time.saturating_sub(self.host_fn_time)
    }
}

/// The kind of a proxy-wasm metric (`proxy_define_metric`'s type: 0, 1, 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl fmt::Display for MetricKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        })
    }
}

/// A metric's value as the host reads it out of the metrics shared memory
/// (`ngx_wa_metrics_get`: every worker's slot merged), which is what
/// `proxy_get_metric` answers and what Kong's Prometheus plugin exports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetricValue {
    /// The sum of every worker's slot, modulo 2^64.
    Counter(u64),
    /// The value last recorded (as an unsigned 64-bit number: a negative
    /// value comes out as its two's complement).
    Gauge(u64),
    /// Log2 bins as `(upper bound, count)` in the host's order, the last
    /// one the `u32::MAX` ("+Inf") bin; `sum` is the sum of every value
    /// recorded, modulo 2^64.
    Histogram { bins: Vec<(u32, u32)>, sum: u64 },
}

/// One metric of the metrics shared memory
/// ([`Emulator::metrics`](super::Emulator::metrics)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricReading {
    /// The stored (prefixed) name: `pw:<filter>:<name>`.
    pub name: String,
    /// The id `proxy_define_metric` returns (the CRC-32 of `name`).
    pub id: u32,
    pub value: MetricValue,
}

impl MetricReading {
    pub fn kind(&self) -> MetricKind {
        match self.value {
            MetricValue::Counter(_) => MetricKind::Counter,
            MetricValue::Gauge(_) => MetricKind::Gauge,
            MetricValue::Histogram { .. } => MetricKind::Histogram,
        }
    }

    /// The value of a counter or a gauge (`None` for a histogram).
    pub fn number(&self) -> Option<u64> {
        match self.value {
            MetricValue::Counter(v) | MetricValue::Gauge(v) => Some(v),
            MetricValue::Histogram { .. } => None,
        }
    }
}

/// One entry of a filter's `meta.json` `metrics.label_patterns`: Kong's
/// Prometheus plugin turns the part of a metric name matched by `pattern`
/// (a PCRE with two groups: the whole label text, then the value) into
/// the label `label`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelPattern {
    pub label: String,
    pub pattern: String,
}

impl LabelPattern {
    pub fn new(label: &str, pattern: &str) -> Self {
        Self {
            label: label.to_string(),
            pattern: pattern.to_string(),
        }
    }

    /// The `metrics.label_patterns` of a filter's `meta.json` (none when
    /// the file has no `metrics`).
    pub fn from_meta_json(meta_json: &str) -> anyhow::Result<Vec<LabelPattern>> {
        let meta: serde_json::Value = serde_json::from_str(meta_json)?;
        let Some(patterns) = meta.pointer("/metrics/label_patterns") else {
            return Ok(Vec::new());
        };
        let list = patterns
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("metrics.label_patterns is not an array"))?;
        list.iter()
            .enumerate()
            .map(|(i, p)| {
                let field = |name: &str| {
                    p.get(name).and_then(|v| v.as_str()).ok_or_else(|| {
                        anyhow::anyhow!("metrics.label_patterns[{i}].{name} is not a string")
                    })
                };
                Ok(LabelPattern::new(field("label")?, field("pattern")?))
            })
            .collect()
    }
}

/// A stable UUID-looking id derived from bytes (entity ids, node id).
pub(crate) fn uuid_from(bytes: &[u8], salt: u8) -> String {
    let mut h: [u8; 16] = [0; 16];
    let mut x: u64 = 0xcbf2_9ce4_8422_2325 ^ u64::from(salt);
    for (i, slot) in h.iter_mut().enumerate() {
        for &b in bytes {
            x ^= u64::from(b);
            x = x.wrapping_mul(0x0100_0000_01b3);
        }
        x ^= i as u64;
        x = x.wrapping_mul(0x0100_0000_01b3);
        *slot = (x >> 32) as u8;
    }
    let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        hex.get(0..8).unwrap_or(""),
        hex.get(8..12).unwrap_or(""),
        hex.get(13..16).unwrap_or(""),
        hex.get(17..20).unwrap_or(""),
        hex.get(20..32).unwrap_or("")
    )
}
