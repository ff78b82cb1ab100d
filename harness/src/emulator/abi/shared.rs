//! Shared data (`proxy_get/set_shared_data`, only with `shm_kv`) and shared
//! queues (none can be found).

use super::common::{
    check_u32, count, read, trap, C, CAS_MISMATCH, INVALID_MEMORY_ACCESS, MODULE, NOT_FOUND, OK,
};
use crate::emulator::guest_mem;
use crate::emulator::state::{HostCtx, SharedValue};
use wasmtime::Linker;

/// Registers this family's host functions.
pub(super) fn add(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
    linker.func_wrap(
        MODULE,
        "proxy_get_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, rdata: i32, rsize: i32, rcas: i32| {
            count(&mut c, "proxy_get_shared_data");
            let key = read(&mut c, kptr, klen)?;
            for p in [rdata, rsize, rcas] {
                check_u32(&mut c, p)?;
            }
            if !c.data().opts.shm_kv {
                return Err(trap(
                    &mut c,
                    "host trap (bad usage): failed getting value from shm (could not resolve namespace)",
                ));
            }
            let found = c.data().shared.get(&key).map(|v| (v.data.clone(), v.cas));
            let Some((data, cas)) = found else {
                return Ok(NOT_FOUND);
            };
            let Some(p) = guest_mem::alloc_copy(&mut c, &data) else {
                return Err(trap(
                    &mut c,
                    "host trap (internal error): failed getting value from shm (no memory)",
                ));
            };
            let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
            if !(guest_mem::write_u32(&mut c, rdata, p)
                && guest_mem::write_u32(&mut c, rsize, len)
                && guest_mem::write_u32(&mut c, rcas, cas))
            {
                return Ok(INVALID_MEMORY_ACCESS);
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_set_shared_data",
        |mut c: C<'_>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| {
            count(&mut c, "proxy_set_shared_data");
            let key = read(&mut c, kptr, klen)?;
            let value = read(&mut c, vptr, vlen)?;
            if !c.data().opts.shm_kv {
                return Err(trap(
                    &mut c,
                    "host trap (bad usage): failed setting value to shm (could not resolve namespace)",
                ));
            }
            let cas = u32::from_ne_bytes(cas.to_ne_bytes());
            let shared = &mut c.data_mut().shared;
            let current = shared.get(&key).map_or(0, |v| v.cas);
            if cas != 0 && cas != current {
                return Ok(CAS_MISMATCH);
            }
            if vptr == 0 {
                shared.remove(&key);
            } else {
                shared.insert(
                    key,
                    SharedValue {
                        data: value,
                        cas: current.wrapping_add(1).max(1),
                    },
                );
            }
            Ok(OK)
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_register_shared_queue",
        |mut c: C<'_>, nptr: i32, nlen: i32, rid: i32| {
            count(&mut c, "proxy_register_shared_queue");
            let _name = read(&mut c, nptr, nlen)?;
            check_u32(&mut c, rid)?;
            Err::<i32, _>(trap(&mut c, "host trap (bad usage): could not find queue"))
        },
    )?;
    for name in ["proxy_dequeue_shared_queue", "proxy_enqueue_shared_queue"] {
        linker.func_wrap(
            MODULE,
            name,
            move |mut c: C<'_>, _q: i32, _a: i32, _b: i32| {
                count(&mut c, name);
                Err::<i32, _>(trap(&mut c, "host trap (bad usage): could not find queue"))
            },
        )?;
    }
    Ok(())
}
