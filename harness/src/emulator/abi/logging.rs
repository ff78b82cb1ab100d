//! Logging (`proxy_log`), the clock, the effective context and the tick
//! period.

use super::common::{count, read, trap, BAD_ARGUMENT, C, INTERNAL_FAILURE, MODULE, OK};
use crate::emulator::api::LogLevel;
use crate::emulator::guest_mem;
use crate::emulator::state::{Cur, HostCtx};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::Linker;

/// Registers this family's host functions.
pub(super) fn add(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
    linker.func_wrap(
        MODULE,
        "proxy_log",
        |mut c: C<'_>, level: i32, ptr: i32, len: i32| {
            count(&mut c, "proxy_log");
            let msg = read(&mut c, ptr, len)?;
            let level = match level {
                0 => LogLevel::Trace,
                1 => LogLevel::Debug,
                2 => LogLevel::Info,
                3 => LogLevel::Warn,
                4 => LogLevel::Error,
                5 => LogLevel::Critical,
                other => {
                    c.data_mut().host_log(
                        LogLevel::Warn,
                        format!("NYI - proxy_log bad log_level: {other}"),
                    );
                    return Ok(BAD_ARGUMENT);
                }
            };
            let ctx = c.data_mut();
            let id = ctx.cur_context_id();
            ctx.log(level, id, true, String::from_utf8_lossy(&msg).into_owned());
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_get_current_time_nanoseconds",
        |mut c: C<'_>, out: i32| {
            count(&mut c, "proxy_get_current_time_nanoseconds");
            guest_mem::check_slice(&c, out, 8).map_err(|m| trap(&mut c, m))?;
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            if !guest_mem::write_u64(&mut c, out, now) {
                return Err(trap(&mut c, guest_mem::BAD_SLICE_PTR));
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_set_effective_context",
        |mut c: C<'_>, _id: i32| {
            count(&mut c, "proxy_set_effective_context");
            OK
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_set_tick_period_milliseconds",
        |mut c: C<'_>, period: i32| {
            count(&mut c, "proxy_set_tick_period_milliseconds");
            set_tick_period(&mut c, period)
        },
    )?;
    Ok(())
}

fn set_tick_period(c: &mut C<'_>, period: i32) -> anyhow::Result<i32> {
    let Cur::Root { root } = c.data().cur else {
        return Err(trap(c, "can only set tick_period in root context"));
    };
    let period = u32::from_ne_bytes(period.to_ne_bytes());
    let Some(r) = c.data_mut().roots.get_mut(root) else {
        return Ok(INTERNAL_FAILURE);
    };
    if period != 0 && r.tick_period != 0 {
        return Err(trap(c, "tick_period already set"));
    }
    r.tick_period = period;
    r.next_tick =
        (period != 0).then(|| std::time::Instant::now() + Duration::from_millis(u64::from(period)));
    Ok(OK)
}
