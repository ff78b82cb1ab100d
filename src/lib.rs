//! `ping_auth`: Ping Identity's Sideband authorization (the `ping-auth` Kong
//! plugin's wire protocol) as a proxy-wasm filter.
//!
//! Everything except [`filter`] is plain Rust with no host dependency, in
//! layers (each uses only those above it):
//!
//! - [`http`], [`url`]: HTTP vocabulary (header, reply) and every URL parser.
//! - [`failure`]: the failure policy (each failure's reply, log line, back-off).
//! - [`protocol`]: the sideband payloads, endpoints and reply parsing.
//! - [`config`]: the configuration, validated and compiled once.
//! - [`cert`], [`debug`], [`slots`], [`local_reply`], [`upstream`]: client
//!   certificates, redacted dumps, the host's header slots, exact local
//!   replies, the response hook's upstream target.
//! - [`host`]: the host boundary (one trait; a native mock for tests).
//! - [`exchange`]: one request's state machine over the host's steps.
//!
//! `filter` is the proxy-wasm adapter, compiled only for `wasm32`.

pub mod cache;
pub mod cert;
pub mod config;
pub mod debug;
pub mod exchange;
pub mod failure;
pub mod host;
pub mod http;
pub mod local_reply;
pub mod metrics;
pub mod protocol;
pub mod slots;
pub mod upstream;
pub mod url;

#[cfg(target_arch = "wasm32")]
mod filter;
