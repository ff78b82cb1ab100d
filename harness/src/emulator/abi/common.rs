//! What the host function families share: the proxy-wasm statuses, the
//! caller type, host-call counting, traps, and guest memory reads and
//! writes that trap (or fail) the way the host does.

use crate::emulator::faults::Crashed;
use crate::emulator::guest_mem;
use crate::emulator::state::HostCtx;
use anyhow::anyhow;
use wasmtime::Caller;

pub(super) const MODULE: &str = "env";

// proxy-wasm statuses
pub(super) const OK: i32 = 0;
pub(super) const NOT_FOUND: i32 = 1;
pub(super) const BAD_ARGUMENT: i32 = 2;
pub(super) const INVALID_MEMORY_ACCESS: i32 = 6;
pub(super) const CAS_MISMATCH: i32 = 8;
pub(super) const INTERNAL_FAILURE: i32 = 10;

pub(super) type C<'a> = Caller<'a, HostCtx>;

/// Counts a host call in the statistics.
pub(super) fn count(caller: &mut C<'_>, name: &'static str) {
    caller.data_mut().count_hostcall(name);
}

/// Records a trap message and returns the error that makes Wasmtime trap.
pub(super) fn trap(caller: &mut C<'_>, msg: impl Into<String>) -> anyhow::Error {
    let msg = msg.into();
    caller.data_mut().set_trap(msg.clone());
    anyhow!(msg)
}

pub(super) fn bad_usage(caller: &mut C<'_>, msg: &str) -> anyhow::Error {
    trap(caller, format!("host trap (bad usage): {msg}"))
}

/// The host function crashed the worker: the guest call is aborted (the
/// worker is gone; see `faults.rs`).
pub(super) fn crashed(_: Crashed) -> anyhow::Error {
    anyhow!("the worker process crashed (emulated host fault)")
}

/// Reads a guest slice or traps like the host does.
pub(super) fn read(caller: &mut C<'_>, ptr: i32, len: i32) -> anyhow::Result<Vec<u8>> {
    guest_mem::read(caller, ptr, len).map_err(|msg| trap(caller, msg))
}

pub(super) fn check_u32(caller: &mut C<'_>, ptr: i32) -> anyhow::Result<()> {
    guest_mem::check_u32_ptr(caller, ptr).map_err(|msg| trap(caller, msg))
}

/// Copies `bytes` into fresh guest memory and stores the pointer and length:
/// `InternalFailure` when the guest's allocator fails, `InvalidMemoryAccess`
/// when the copy does not fit.
pub(super) fn return_bytes(caller: &mut C<'_>, bytes: &[u8], rbuf: i32, rlen: i32) -> i32 {
    let p = guest_mem::alloc(caller, bytes.len());
    if p == 0 {
        return INTERNAL_FAILURE;
    }
    if !guest_mem::write(caller, p, bytes) {
        return INVALID_MEMORY_ACCESS;
    }
    let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    if !(guest_mem::write_u32(caller, rbuf, p) && guest_mem::write_u32(caller, rlen, len)) {
        return INVALID_MEMORY_ACCESS;
    }
    OK
}
