//! Test and demo harness for the `ping_auth` filter.
//!
//! - [`emulator`]: a proxy-wasm host on Wasmtime that behaves like Kong's Wasm
//!   host (ngx_wasm_module) as recorded in `host-observed.md`.
//! - [`gateway`]: the emulator behind a listening socket (many client
//!   connections, one worker), for the demo, load tests and benchmarks.
//! - [`http`]: a small blocking HTTP/1.1 server and message codec (plain or TLS).
//! - [`policy`]: a Sideband API policy server (rules from a JSON policy file).
//! - [`upstream`]: an echo upstream that records what it receives.
//! - [`fault_server`]: a scripted raw-TCP server that misbehaves on the wire
//!   (stalls, resets, truncated or malformed replies) for fault tests.
//! - [`certs`]: a throw-away test PKI.
//! - [`wasm_build`]: builds the filter's `.wasm` once per test process.

pub mod bench;
pub mod certs;
pub mod emulator;
pub mod fault_server;
pub mod gateway;
pub mod http;
pub mod policy;
pub mod upstream;
pub mod wasm_build;
