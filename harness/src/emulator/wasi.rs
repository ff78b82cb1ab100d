//! The WASI preview 1 subset Kong 3.4–3.10 provide (15 functions).
//!
//! Anything else a module imports from `wasi_snapshot_preview1` makes it fail
//! to load, as in Kong. The behaviours follow ngx_wasm_module: no arguments,
//! no environment (nginx workers start with an empty environment here), no
//! files (`fd_*` answer `EBADF`, `path_open` answers `ENOTDIR`), `fd_write` to
//! stdout/stderr goes to the error log (info / error), `proc_exit` traps.

use super::api::LogLevel;
use super::guest_mem;
use super::state::HostCtx;
use anyhow::anyhow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Linker};

const MODULE: &str = "wasi_snapshot_preview1";

/// The functions this host provides.
pub(crate) const IMPORTS: [&str; 15] = [
    "args_get",
    "args_sizes_get",
    "clock_time_get",
    "environ_get",
    "environ_sizes_get",
    "fd_close",
    "fd_fdstat_get",
    "fd_prestat_get",
    "fd_prestat_dir_name",
    "fd_read",
    "fd_seek",
    "fd_write",
    "path_open",
    "proc_exit",
    "random_get",
];

const ERRNO_SUCCESS: i32 = 0;
const ERRNO_BADF: i32 = 8;
const ERRNO_NOTDIR: i32 = 54;
const ERRNO_NOTSUP: i32 = 58;

fn count(caller: &mut Caller<'_, HostCtx>, name: &'static str) {
    caller.data_mut().count_hostcall(name);
}

/// Records a host trap and returns the error that makes Wasmtime trap.
fn trap(caller: &mut Caller<'_, HostCtx>, msg: &str) -> anyhow::Error {
    caller.data_mut().set_trap(msg);
    anyhow!("{msg}")
}

/// A small random generator (the host uses nginx's `ngx_random`).
fn next_random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
            | 1;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    STATE.store(x, Ordering::Relaxed);
    x
}

pub(crate) fn add_to_linker(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
    linker.func_wrap(
        MODULE,
        "args_get",
        |mut caller: Caller<'_, HostCtx>, _argv: i32, _buf: i32| -> anyhow::Result<i32> {
            count(&mut caller, "args_get");
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "args_sizes_get",
        |mut caller: Caller<'_, HostCtx>, argc: i32, size: i32| -> anyhow::Result<i32> {
            count(&mut caller, "args_sizes_get");
            write_two_zeros(&mut caller, argc, size)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_get",
        |mut caller: Caller<'_, HostCtx>, _ptrs: i32, _buf: i32| -> anyhow::Result<i32> {
            count(&mut caller, "environ_get");
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "environ_sizes_get",
        |mut caller: Caller<'_, HostCtx>, count_ptr: i32, size: i32| -> anyhow::Result<i32> {
            count(&mut caller, "environ_sizes_get");
            write_two_zeros(&mut caller, count_ptr, size)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut caller: Caller<'_, HostCtx>,
         clock: i32,
         _precision: i64,
         out: i32|
         -> anyhow::Result<i32> {
            count(&mut caller, "clock_time_get");
            if let Err(msg) = guest_mem::check_slice(&caller, out, 8) {
                return Err(trap(&mut caller, msg));
            }
            let nanos: u64 = match clock {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64),
                1 => {
                    // nginx's monotonic clock has millisecond precision.
                    let ms = caller.data().started.elapsed().as_millis() as u64 + 1_000;
                    ms * 1_000_000
                }
                _ => return Ok(ERRNO_NOTSUP),
            };
            if !guest_mem::write_u64(&mut caller, out, nanos) {
                return Err(trap(&mut caller, guest_mem::BAD_SLICE_PTR));
            }
            Ok(ERRNO_SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_close",
        |mut caller: Caller<'_, HostCtx>, _fd: i32| -> i32 {
            count(&mut caller, "fd_close");
            ERRNO_BADF
        },
    )?;
    for name in ["fd_fdstat_get", "fd_prestat_get"] {
        linker.func_wrap(
            MODULE,
            name,
            move |mut caller: Caller<'_, HostCtx>, _fd: i32, _p: i32| -> i32 {
                count(&mut caller, name);
                ERRNO_BADF
            },
        )?;
    }
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |mut caller: Caller<'_, HostCtx>, _fd: i32, _p: i32, _l: i32| -> i32 {
            count(&mut caller, "fd_prestat_dir_name");
            ERRNO_NOTSUP
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_read",
        |mut caller: Caller<'_, HostCtx>, _fd: i32, _iovs: i32, _n: i32, _nread: i32| -> i32 {
            count(&mut caller, "fd_read");
            ERRNO_BADF
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |mut caller: Caller<'_, HostCtx>, _fd: i32, _off: i64, _whence: i32, _new: i32| -> i32 {
            count(&mut caller, "fd_seek");
            ERRNO_BADF
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut caller: Caller<'_, HostCtx>,
         fd: i32,
         iovs: i32,
         iovs_len: i32,
         nwritten: i32|
         -> anyhow::Result<i32> {
            count(&mut caller, "fd_write");
            fd_write(&mut caller, fd, iovs, iovs_len, nwritten)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "path_open",
        |mut caller: Caller<'_, HostCtx>,
         _fd: i32,
         _dirflags: i32,
         _path: i32,
         _path_len: i32,
         _oflags: i32,
         _rights: i64,
         _inheriting: i64,
         _fdflags: i32,
         _opened: i32|
         -> i32 {
            count(&mut caller, "path_open");
            ERRNO_NOTDIR
        },
    )?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |mut caller: Caller<'_, HostCtx>, _code: i32| -> anyhow::Result<()> {
            count(&mut caller, "proc_exit");
            Err(trap(
                &mut caller,
                "host trap (function not yet implemented): proc_exit",
            ))
        },
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut caller: Caller<'_, HostCtx>, buf: i32, len: i32| -> anyhow::Result<i32> {
            count(&mut caller, "random_get");
            if let Err(msg) = guest_mem::check_slice(&caller, buf, len) {
                return Err(trap(&mut caller, msg));
            }
            let n = guest_mem::usize_of(len);
            let mut bytes = Vec::with_capacity(n);
            while bytes.len() < n {
                bytes.extend_from_slice(&next_random().to_le_bytes());
            }
            bytes.truncate(n);
            if n > 0 && !guest_mem::write(&mut caller, guest_mem::usize_of(buf) as u32, &bytes) {
                return Err(trap(&mut caller, guest_mem::BAD_SLICE_PTR));
            }
            Ok(ERRNO_SUCCESS)
        },
    )?;
    Ok(())
}

fn write_two_zeros(caller: &mut Caller<'_, HostCtx>, a: i32, b: i32) -> anyhow::Result<i32> {
    for p in [a, b] {
        if let Err(msg) = guest_mem::check_u32_ptr(caller, p) {
            return Err(trap(caller, msg));
        }
    }
    if !(guest_mem::write_u32(caller, a, 0) && guest_mem::write_u32(caller, b, 0)) {
        return Err(trap(caller, guest_mem::BAD_DATA_PTR));
    }
    Ok(ERRNO_SUCCESS)
}

/// `fd_write` on 1 logs at info, on 2 at error (one trailing newline
/// dropped); other descriptors answer `EBADF`.
fn fd_write(
    caller: &mut Caller<'_, HostCtx>,
    fd: i32,
    iovs: i32,
    iovs_len: i32,
    nwritten: i32,
) -> anyhow::Result<i32> {
    if let Err(msg) = guest_mem::check_u32_ptr(caller, nwritten) {
        return Err(trap(caller, msg));
    }
    let level = match fd {
        1 => LogLevel::Info,
        2 => LogLevel::Error,
        _ => return Ok(ERRNO_BADF),
    };
    let mut message = Vec::new();
    let n = guest_mem::usize_of(iovs_len);
    for i in 0..n {
        let at = guest_mem::usize_of(iovs).saturating_add(i.saturating_mul(8));
        let at = i32::try_from(at).unwrap_or(-1);
        let iov = match guest_mem::read(caller, at, 8) {
            Ok(v) => v,
            Err(msg) => return Err(trap(caller, msg)),
        };
        let word = |k: usize| -> i32 {
            let b: [u8; 4] = iov
                .get(k..k + 4)
                .and_then(|s| s.try_into().ok())
                .unwrap_or([0; 4]);
            i32::from_le_bytes(b)
        };
        match guest_mem::read(caller, word(0), word(4)) {
            Ok(bytes) => message.extend_from_slice(&bytes),
            Err(msg) => return Err(trap(caller, msg)),
        }
    }
    let total = u32::try_from(message.len()).unwrap_or(u32::MAX);
    if !guest_mem::write_u32(caller, nwritten, total) {
        return Err(trap(caller, guest_mem::BAD_DATA_PTR));
    }
    if message.last() == Some(&b'\n') {
        message.pop();
    }
    if !message.is_empty() {
        let text = String::from_utf8_lossy(&message).into_owned();
        let ctx = caller.data_mut();
        let id = ctx.cur_context_id();
        ctx.log(level, id, true, text);
    }
    Ok(ERRNO_SUCCESS)
}
