//! Foreign functions (`proxy_call_foreign_function`): none is emulated.

use super::common::{check_u32, count, read, trap, C, MODULE};
use crate::emulator::state::HostCtx;
use wasmtime::Linker;

/// Registers this family's host functions.
pub(super) fn add(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
    linker.func_wrap(
        MODULE,
        "proxy_call_foreign_function",
        |mut c: C<'_>, nptr: i32, nlen: i32, aptr: i32, alen: i32, rdata: i32, rsize: i32| {
            count(&mut c, "proxy_call_foreign_function");
            let name = read(&mut c, nptr, nlen)?;
            let _args = read(&mut c, aptr, alen)?;
            check_u32(&mut c, rdata)?;
            check_u32(&mut c, rsize)?;
            if name == b"resolve_lua" && c.data().opts.kong {
                return Err(trap(
                    &mut c,
                    "host trap (internal error): foreign function \"resolve_lua\" is not emulated",
                ));
            }
            Err::<i32, _>(trap(
                &mut c,
                "host trap (internal error): unknown foreign function",
            ))
        },
    )?;
    Ok(())
}
