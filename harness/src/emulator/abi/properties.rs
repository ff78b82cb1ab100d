//! Properties: `proxy_get_property` and `proxy_set_property` (the paths are
//! resolved in `properties.rs`).

use super::common::{
    check_u32, count, read, return_bytes, trap, C, INTERNAL_FAILURE, MODULE, NOT_FOUND, OK,
};
use crate::emulator::properties::{self, Prop};
use crate::emulator::state::HostCtx;
use wasmtime::Linker;

/// Registers this family's host functions.
pub(super) fn add(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
    linker.func_wrap(
        MODULE,
        "proxy_get_property",
        |mut c: C<'_>, pptr: i32, plen: i32, rbuf: i32, rlen: i32| {
            count(&mut c, "proxy_get_property");
            let path = read(&mut c, pptr, plen)?;
            check_u32(&mut c, rbuf)?;
            check_u32(&mut c, rlen)?;
            match properties::get(c.data_mut(), &path) {
                Prop::Value(v) => Ok(return_bytes(&mut c, &v, rbuf, rlen)),
                Prop::NotFound => Ok(NOT_FOUND),
                Prop::Error => Ok(INTERNAL_FAILURE),
                Prop::Trap(msg) => Err(trap(&mut c, msg)),
            }
        },
    )?;

    linker.func_wrap(
        MODULE,
        "proxy_set_property",
        |mut c: C<'_>, pptr: i32, plen: i32, vptr: i32, vlen: i32| {
            count(&mut c, "proxy_set_property");
            let path = read(&mut c, pptr, plen)?;
            let value = read(&mut c, vptr, vlen)?;
            // A NULL pointer means "no value" (unset).
            let value = if vptr == 0 {
                None
            } else {
                Some(value.as_slice())
            };
            match properties::set(c.data_mut(), &path, value) {
                Prop::Value(_) => Ok(OK),
                Prop::NotFound => Ok(NOT_FOUND),
                Prop::Error => Ok(INTERNAL_FAILURE),
                Prop::Trap(msg) => Err(trap(&mut c, msg)),
            }
        },
    )?;
    Ok(())
}
