//! Metrics: defining, reading, incrementing and recording
//! (`ngx_proxy_wasm_hfuncs_define_metric`, `_get_metric`,
//! `_increment_metric`, `_record_metric` in
//! `src/common/proxy_wasm/ngx_proxy_wasm_host.c`). The store itself is
//! `emulator/metrics.rs`. Every failure is a trap with an "internal
//! error" message (`NGX_WAVM_ERROR`).

use super::common::{count, read, trap, C, INVALID_MEMORY_ACCESS, MODULE, OK};
use crate::emulator::api::{LogLevel, MetricKind};
use crate::emulator::guest_mem;
use crate::emulator::metrics::{DefineError, Recorded, UpdateError};
use crate::emulator::state::Cur;
use crate::emulator::state::HostCtx;
use wasmtime::Linker;

const PREFIX: &str = "host trap (internal error): ";

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
            let id = metric_id(id);
            let found = c.data().metrics.get(id).map(|r| (r.kind(), r.number()));
            match found {
                Some((MetricKind::Histogram, _)) => Err(trap(
                    &mut c,
                    format!("{PREFIX}could not retrieve metric id \"{id}\": metric is a histogram"),
                )),
                Some((_, value)) => {
                    if !guest_mem::write_u64(&mut c, rvalue, value.unwrap_or(0)) {
                        return Ok(INVALID_MEMORY_ACCESS);
                    }
                    Ok(OK)
                }
                None => Err(trap(
                    &mut c,
                    format!("{PREFIX}could not retrieve metric id \"{id}\": metric not found"),
                )),
            }
        },
    )?;
    linker.func_wrap(
        MODULE,
        "proxy_increment_metric",
        |mut c: C<'_>, id: i32, offset: i64| {
            count(&mut c, "proxy_increment_metric");
            let id = metric_id(id);
            match c.data_mut().metrics.increment(id, offset) {
                Ok(()) => Ok(OK),
                Err(e) => {
                    let why = match e {
                        UpdateError::NotFound => "metric not found",
                        UpdateError::WrongKind => "metric not a counter",
                    };
                    Err(trap(
                        &mut c,
                        format!("{PREFIX}could not increment metric id \"{id}\": {why}"),
                    ))
                }
            }
        },
    )?;
    linker.func_wrap(MODULE, "proxy_record_metric", |mut c: C<'_>, id: i32, value: i64| {
        count(&mut c, "proxy_record_metric");
        let id = metric_id(id);
        match c.data_mut().metrics.record(id, value) {
            Ok(Recorded::Done) => Ok(OK),
            Ok(Recorded::NoNewBin(v)) => {
                c.data_mut().host_log(
                    LogLevel::Info,
                    format!("cannot add a new histogram bin for value \"{v}\", returning next closest bin"),
                );
                Ok(OK)
            }
            Err(e) => {
                let why = match e {
                    UpdateError::NotFound => "metric not found",
                    UpdateError::WrongKind => "metric is a counter",
                };
                Err(trap(
                    &mut c,
                    format!("{PREFIX}could not record value in metric id \"{id}\": {why}"),
                ))
            }
        }
    })?;
    Ok(())
}

/// The guest's `i32` as the host's `uint32_t` id.
fn metric_id(id: i32) -> u32 {
    u32::from_ne_bytes(id.to_ne_bytes())
}

fn define_metric(c: &mut C<'_>, kind: i32, name: &[u8], rid: i32) -> anyhow::Result<i32> {
    let name_text = String::from_utf8_lossy(name).into_owned();
    let kind = match kind {
        0 => MetricKind::Counter,
        1 => MetricKind::Gauge,
        2 => MetricKind::Histogram,
        other => {
            let shown = metric_id(other);
            return Err(trap(
                c,
                format!(
                    "{PREFIX}could not define metric \"{name_text}\": unknown type \"{shown}\""
                ),
            ));
        }
    };
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
    if 4 + filter.len() + name.len() > c.data().opts.metrics_max_name_length {
        return Err(trap(
            c,
            format!("{PREFIX}could not define metric: name \"{name_text}\" too long"),
        ));
    }
    let mut full = format!("pw:{filter}:").into_bytes();
    full.extend_from_slice(name);
    let id = match c.data_mut().metrics.define(&full, kind) {
        Ok(id) => id,
        Err(e) => {
            let line = match e {
                DefineError::Histogram => {
                    (LogLevel::Error, "cannot allocate histogram".to_string())
                }
                DefineError::Pair {
                    key_size,
                    value_size,
                } => (
                    LogLevel::Critical,
                    format!(
                        "\"metrics\" shm store: no memory; cannot allocate pair with key size \
                         {key_size} and value size {value_size}"
                    ),
                ),
            };
            c.data_mut().host_log(line.0, line.1);
            return Err(trap(
                c,
                format!(
                    "{PREFIX}could not define metric \"{name_text}\": no memory (increase \
                     \"slab_size\" directive)"
                ),
            ));
        }
    };
    if !guest_mem::write_u32(c, rid, id) {
        return Ok(INVALID_MEMORY_ACCESS);
    }
    Ok(OK)
}
