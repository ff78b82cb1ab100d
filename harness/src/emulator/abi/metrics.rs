//! Metrics: defining, reading, incrementing and recording.

use super::common::{count, read, trap, C, INVALID_MEMORY_ACCESS, MODULE, OK};
use crate::emulator::guest_mem;
use crate::emulator::state::{Cur, HostCtx, Metric};
use wasmtime::Linker;

/// Registers this family's host functions.
pub(super) fn add(linker: &mut Linker<HostCtx>) -> anyhow::Result<()> {
    linker.func_wrap(
        MODULE,
        "proxy_define_metric",
        |mut c: C<'_>, kind: i32, nptr: i32, nlen: i32, rid: i32| {
            count(&mut c, "proxy_define_metric");
            let name = read(&mut c, nptr, nlen)?;
            guest_mem::check_slice(&c, rid, 4).map_err(|m| trap(&mut c, m))?;
            define_metric(&mut c, kind, &name, rid)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "proxy_get_metric",
        |mut c: C<'_>, id: i32, rvalue: i32| {
            count(&mut c, "proxy_get_metric");
            guest_mem::check_typed_ptr(&c, rvalue, 8).map_err(|m| trap(&mut c, m))?;
            let idx = metric_index(id);
            let found = c.data().metrics.get(idx).map(|(_, m)| (m.kind, m.value));
            match found {
                Some((2, _)) => Err(trap(
                    &mut c,
                    format!("could not retrieve metric id \"{id}\": metric is a histogram"),
                )),
                Some((_, value)) => {
                    let v = u64::try_from(value).unwrap_or(0);
                    if !guest_mem::write_u64(&mut c, rvalue, v) {
                        return Ok(INVALID_MEMORY_ACCESS);
                    }
                    Ok(OK)
                }
                None => Err(trap(
                    &mut c,
                    format!("could not retrieve metric id \"{id}\": metric not found"),
                )),
            }
        },
    )?;
    linker.func_wrap(MODULE, "proxy_increment_metric", |mut c: C<'_>, id: i32, offset: i64| {
        count(&mut c, "proxy_increment_metric");
        let idx = metric_index(id);
        match c.data_mut().metrics.get_mut(idx) {
            Some((_, m)) if m.kind != 2 => {
                m.value = m.value.saturating_add(offset);
                Ok(OK)
            }
            Some(_) => Err(trap(
                &mut c,
                format!("host trap (internal error): could not increment metric id \"{id}\": metric not a counter"),
            )),
            None => Err(trap(
                &mut c,
                format!("host trap (internal error): could not increment metric id \"{id}\": metric not found"),
            )),
        }
    })?;
    linker.func_wrap(MODULE, "proxy_record_metric", |mut c: C<'_>, id: i32, value: i64| {
        count(&mut c, "proxy_record_metric");
        let idx = metric_index(id);
        match c.data_mut().metrics.get_mut(idx) {
            Some((_, m)) if m.kind != 0 => {
                m.value = value;
                Ok(OK)
            }
            Some(_) => Err(trap(
                &mut c,
                format!("host trap (internal error): could not record value in metric id \"{id}\": metric is a counter"),
            )),
            None => Err(trap(
                &mut c,
                format!("host trap (internal error): could not record value in metric id \"{id}\": metric not found"),
            )),
        }
    })?;
    Ok(())
}

fn metric_index(id: i32) -> usize {
    let id = u32::from_ne_bytes(id.to_ne_bytes()) as usize;
    id.wrapping_sub(1)
}

fn define_metric(c: &mut C<'_>, kind: i32, name: &[u8], rid: i32) -> anyhow::Result<i32> {
    let name_text = String::from_utf8_lossy(name).into_owned();
    if !(0..=2).contains(&kind) {
        return Err(trap(
            c,
            format!("host trap (internal error): could not define metric \"{name_text}\": unknown type \"{kind}\""),
        ));
    }
    let filter = match c.data().cur {
        Cur::Root { root } => c.data().roots.get(root).map(|r| r.name.clone()),
        Cur::Http { stream, exec } => c
            .data()
            .streams
            .get(&stream)
            .and_then(|s| s.pw.execs.get(exec))
            .and_then(|e| c.data().roots.get(e.root))
            .map(|r| r.name.clone()),
        Cur::None => None,
    }
    .unwrap_or_default();
    if 4 + filter.len() + name.len() > 256 {
        return Err(trap(
            c,
            format!("host trap (internal error): could not define metric: name \"{name_text}\" too long"),
        ));
    }
    let full = format!("pw:{filter}:{name_text}");
    let metrics = &mut c.data_mut().metrics;
    let idx = match metrics.iter().position(|(n, _)| *n == full) {
        Some(i) => i,
        None => {
            metrics.push((
                full,
                Metric {
                    kind: u32::try_from(kind).unwrap_or(0),
                    value: 0,
                },
            ));
            metrics.len() - 1
        }
    };
    let id = u32::try_from(idx + 1).unwrap_or(u32::MAX);
    if !guest_mem::write_u32(c, rid, id) {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}
