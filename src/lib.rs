//! `ping_auth`: Ping Identity's Sideband authorization (the `ping-auth` Kong
//! plugin's wire protocol) as a proxy-wasm filter.
//!
//! Everything except [`filter`] is plain Rust with no host dependency: the
//! configuration, the sideband payloads, the diff of the policy's reply into
//! directives, the response hook and the failure policy. `filter` is the thin
//! proxy-wasm glue, compiled only for `wasm32`.

pub mod backoff;
pub mod cert;
pub mod config;
pub mod debug;
pub mod decision;
pub mod failure;
pub mod json;
pub mod local_reply;
pub mod reply;
pub mod request;
pub mod response_hook;
pub mod slots;
pub mod upstream;

#[cfg(target_arch = "wasm32")]
mod filter;
