//! Guest memory access for host functions (`abi`, `wasi`), with the host's
//! checks: slice and pointer validation, reads, writes and the guest's
//! allocator.

use super::state::HostCtx;
use wasmtime::{Caller, Val};

/// A pointer or length the guest passed was out of bounds or misaligned:
/// the host traps with this message.
pub const BAD_DATA_PTR: &str =
    "host trap (bad usage): invalid data pointer passed to host function";
pub const BAD_SLICE_PTR: &str =
    "host trap (bad usage): invalid slice pointer passed to host function";

fn as_u32(v: i32) -> u32 {
    u32::from_ne_bytes(v.to_ne_bytes())
}

pub fn usize_of(v: i32) -> usize {
    as_u32(v) as usize
}

/// Validates a slice `[ptr, ptr+len)` (NULL only for an empty slice).
pub fn check_slice(caller: &Caller<'_, HostCtx>, ptr: i32, len: i32) -> Result<(), &'static str> {
    let (p, n) = (usize_of(ptr), usize_of(len));
    if p == 0 {
        return if n == 0 { Ok(()) } else { Err(BAD_SLICE_PTR) };
    }
    let size = caller.data().memory.map_or(0, |m| m.data_size(caller));
    match p.checked_add(n) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BAD_SLICE_PTR),
    }
}

/// Validates a pointer to a 4-byte aligned u32 the host will write.
pub fn check_u32_ptr(caller: &Caller<'_, HostCtx>, ptr: i32) -> Result<(), &'static str> {
    check_typed_ptr(caller, ptr, 4)
}

pub fn check_typed_ptr(
    caller: &Caller<'_, HostCtx>,
    ptr: i32,
    size_align: usize,
) -> Result<(), &'static str> {
    let p = usize_of(ptr);
    if p == 0 || !p.is_multiple_of(size_align) {
        return Err(BAD_DATA_PTR);
    }
    let size = caller.data().memory.map_or(0, |m| m.data_size(caller));
    match p.checked_add(size_align) {
        Some(end) if end <= size => Ok(()),
        _ => Err(BAD_DATA_PTR),
    }
}

/// Reads a validated slice.
pub fn read(caller: &Caller<'_, HostCtx>, ptr: i32, len: i32) -> Result<Vec<u8>, &'static str> {
    check_slice(caller, ptr, len)?;
    let (p, n) = (usize_of(ptr), usize_of(len));
    if n == 0 {
        return Ok(Vec::new());
    }
    let memory = caller.data().memory.ok_or(BAD_SLICE_PTR)?;
    memory
        .data(caller)
        .get(p..p + n)
        .map(<[u8]>::to_vec)
        .ok_or(BAD_SLICE_PTR)
}

/// Writes bytes at `ptr`; `false` if out of bounds.
pub fn write(caller: &mut Caller<'_, HostCtx>, ptr: u32, bytes: &[u8]) -> bool {
    let Some(memory) = caller.data().memory else {
        return false;
    };
    memory.write(caller, ptr as usize, bytes).is_ok()
}

pub fn write_u32(caller: &mut Caller<'_, HostCtx>, ptr: i32, value: u32) -> bool {
    write(caller, as_u32(ptr), &value.to_le_bytes())
}

pub fn write_u64(caller: &mut Caller<'_, HostCtx>, ptr: i32, value: u64) -> bool {
    write(caller, as_u32(ptr), &value.to_le_bytes())
}

/// Calls the guest's `malloc`; 0 on failure.
pub fn alloc(caller: &mut Caller<'_, HostCtx>, size: usize) -> u32 {
    let Some(malloc) = caller.data().malloc else {
        return 0;
    };
    let Ok(size) = i32::try_from(size) else {
        return 0;
    };
    let mut out = [Val::I32(0)];
    caller.data_mut().stats.guest_calls += 1;
    match malloc.call(&mut *caller, &[Val::I32(size)], &mut out) {
        Ok(()) => out.first().and_then(Val::i32).map_or(0, as_u32),
        Err(_) => 0,
    }
}

/// Allocates guest memory and copies `bytes` into it.
pub fn alloc_copy(caller: &mut Caller<'_, HostCtx>, bytes: &[u8]) -> Option<u32> {
    let p = alloc(caller, bytes.len());
    if p == 0 {
        return None;
    }
    if write(caller, p, bytes) {
        Some(p)
    } else {
        None
    }
}
