//! The printed report: one table per section, then the budgets.

use super::emulated::{Growth, WasmRun};
use super::native::NativeRun;
use super::scenarios::Scenario;
use super::size::Sizes;
use super::stats::{bytes, us, Table};
use super::{Budget, Counts};
use std::collections::BTreeSet;
use std::path::Path;

/// The results of one scenario.
pub struct ScenarioResult<'a> {
    pub sc: &'a Scenario,
    pub wasm: WasmRun,
    pub native: NativeRun,
}

/// A path relative to the workspace when it is inside it.
pub fn display_path(p: &Path) -> String {
    let root = crate::wasm_build::workspace_root();
    p.strip_prefix(&root).unwrap_or(p).display().to_string()
}

fn count(v: f64) -> String {
    if (v - v.round()).abs() < 0.005 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

pub fn header(counts: Counts, quick: bool, sizes: &Sizes) {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (path, n, label) = sizes.shipped();
    println!(
        "ping_auth benchmark ({}): {cpus} CPUs, Wasmtime 26 (Cranelift); per scenario {} warm-up + {} timed requests, up to {} native runs",
        if quick { "--quick" } else { "full run" },
        counts.warmup,
        counts.requests,
        counts.native
    );
    println!(
        "module run in the emulator: {} ({label}, {} bytes)",
        display_path(path),
        bytes(n)
    );
}

pub fn per_request(results: &[ScenarioResult<'_>], baseline: &WasmRun) {
    let base = baseline.own.median_us;
    println!();
    println!("== Per-request cost: the filter's own work, µs ==");
    println!(
        "   wasm: time inside calls into the module (host functions included, network and the"
    );
    println!(
        "   emulator's I/O threads excluded); native: the same core functions on the same inputs"
    );
    println!(
        "   baseline: a do-nothing filter (harness/noop-filter) on the small GET: median {}, p99 {}, code {}",
        us(base),
        us(baseline.own.p99_us),
        us(baseline.code.median_us)
    );
    println!(
        "   (the emulator's and Wasmtime's own cost per request); share = wasm median - baseline"
    );
    let mut t = Table::new(&[
        "scenario",
        "wasm median",
        "share",
        "code",
        "wasm p99",
        "native median",
        "native p99",
        "wasm/native",
        "same payloads",
        "what",
    ])
    .left(9);
    for r in results {
        let ratio = if r.native.total.median_us > 0.0 {
            format!("{:.1}x", r.wasm.own.median_us / r.native.total.median_us)
        } else {
            "-".into()
        };
        t.row(vec![
            r.sc.key.to_string(),
            us(r.wasm.own.median_us),
            us(r.wasm.own.median_us - base),
            us(r.wasm.code.median_us),
            us(r.wasm.own.p99_us),
            us(r.native.total.median_us),
            us(r.native.total.p99_us),
            ratio,
            if r.native.same_payloads { "yes" } else { "NO" }.into(),
            r.sc.title.to_string(),
        ]);
    }
    print!("{}", t.render());

    println!();
    println!("== Native core work by phase, median µs ==");
    let mut t = Table::new(&[
        "scenario",
        "request payload",
        "reply -> decision",
        "response hook",
        "total",
        "native runs",
    ]);
    for r in results.iter().filter(|r| !r.sc.cache) {
        let n = &r.native;
        t.row(vec![
            r.sc.key.to_string(),
            us(n.payload.median_us),
            us(n.decision.median_us),
            if r.sc.hook {
                us(n.hook.median_us)
            } else {
                "-".into()
            },
            us(n.total.median_us),
            n.total.samples.to_string(),
        ]);
    }
    print!("{}", t.render());
    println!(
        "(a cache hit's native figure is the key, SHA-256 over the keyed parts, and the lookup)"
    );
}

pub fn host_calls(results: &[ScenarioResult<'_>]) {
    println!();
    println!("== Host calls per request (emulator stats, averaged over the timed requests) ==");
    let mut names: BTreeSet<&str> = BTreeSet::new();
    for r in results {
        names.extend(r.wasm.hostcalls.keys().map(String::as_str));
    }
    let mut head = vec!["host call"];
    head.extend(results.iter().map(|r| r.sc.key));
    let mut t = Table::new(&head);
    for name in &names {
        let mut row = vec![name.to_string()];
        for r in results {
            row.push(count(r.wasm.hostcalls.get(*name).copied().unwrap_or(0.0)));
        }
        t.row(row);
    }
    let mut rows = [
        vec!["= host calls".to_string()],
        vec!["guest calls (callbacks + host mallocs)".to_string()],
        vec!["dispatches".to_string()],
        vec!["I/O thread start µs (excluded above)".to_string()],
    ];
    for r in results {
        let w = &r.wasm;
        let values = [
            count(w.hostcalls.values().sum()),
            count(w.guest_calls),
            count(w.dispatches),
            us(w.io_start.median_us),
        ];
        for (row, v) in rows.iter_mut().zip(values) {
            row.push(v);
        }
    }
    for row in rows {
        t.row(row);
    }
    print!("{}", t.render());
    for r in results {
        if r.wasm.logs.count > 0 {
            let per_request = r.wasm.logs.count as f64 / r.wasm.own.samples.max(1) as f64;
            println!(
                "note: {}: {} warning/error log lines per request, e.g. {}",
                r.sc.key,
                count(per_request),
                r.wasm
                    .logs
                    .distinct
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
    }
}

pub fn sizes(sz: &Sizes) {
    println!();
    println!("== .wasm size ==");
    let mut t = Table::new(&["artifact", "bytes"]);
    t.row(vec![
        format!(
            "release profile (opt-level 2, LTO, stripped): {}",
            display_path(&sz.release_path)
        ),
        bytes(sz.release),
    ]);
    match &sz.optimized {
        Some((p, n, v)) => t.row(vec![
            format!("after wasm-opt -Oz ({v}): {}", display_path(p)),
            bytes(*n),
        ]),
        None => t.row(vec![
            "after wasm-opt -Oz: wasm-opt not on PATH (Debian: binaryen)".into(),
            "-".into(),
        ]),
    }
    print!("{}", t.render());
    println!();
    let mut t = Table::new(&["release build, by section", "bytes"]);
    for (label, n) in &sz.release_sections {
        t.row(vec![label.clone(), bytes(*n)]);
    }
    print!("{}", t.render());

    println!();
    println!("== Code by crate (function bodies of the unstripped release build, named by the `name` section) ==");
    let mut t = Table::new(&["crate", "code bytes", "share", "functions"]);
    let total: usize = sz.by_crate.iter().map(|c| c.1).sum();
    for (name, n, f) in &sz.by_crate {
        t.row(vec![
            name.clone(),
            bytes(*n),
            format!("{:.1}%", 100.0 * *n as f64 / total.max(1) as f64),
            f.to_string(),
        ]);
    }
    t.row(vec![
        "total".into(),
        bytes(total),
        "100%".into(),
        sz.by_crate.iter().map(|c| c.2).sum::<usize>().to_string(),
    ]);
    print!("{}", t.render());
    println!(
        "(code section: {} bytes unstripped vs {} in the stripped release build; generic std code",
        bytes(sz.names_code),
        bytes(sz.release_code)
    );
    println!(" instantiated for a crate's types counts as std)");
}

pub fn throughput(runs: &[super::throughput::Throughput]) {
    println!();
    println!("== Concurrent keep-alive clients through one emulated worker ==");
    println!(
        "   the emulator's figures (one thread runs the Wasm instance and every callback), not"
    );
    println!("   Kong's; the real host's are in docs/performance.md");
    let mut t = Table::new(&[
        "scenario",
        "clients",
        "requests",
        "req/s",
        "p50 µs",
        "p99 µs",
        "wrong",
        "lost",
        "traps",
        "host faults",
    ]);
    for r in runs {
        t.row(vec![
            format!("{} ({})", r.key, r.title),
            r.clients.to_string(),
            r.requests.to_string(),
            format!("{:.0}", r.per_second()),
            us(r.latency.median_us),
            us(r.latency.p99_us),
            r.wrong.to_string(),
            r.failed.to_string(),
            r.traps.to_string(),
            r.host_faults.to_string(),
        ]);
    }
    print!("{}", t.render());
}

pub fn memory(results: &[ScenarioResult<'_>], growth: &Growth, tolerance: usize) {
    println!();
    println!("== Linear memory, bytes (it never shrinks: the last figure is the peak) ==");
    let mut t = Table::new(&["scenario", "after on_configure", "peak", "64 KiB pages"]);
    for r in results {
        t.row(vec![
            r.sc.key.to_string(),
            bytes(r.wasm.memory_start),
            bytes(r.wasm.memory_peak),
            (r.wasm.memory_peak / 65_536).to_string(),
        ]);
    }
    print!("{}", t.render());
    println!(
        "growth run (one worker, every scenario in turn): {} after {} requests, {} after {}: +{} (tolerance {}, one page)",
        bytes(growth.at_checkpoint),
        growth.checkpoint,
        bytes(growth.at_end),
        bytes(growth.total),
        bytes(growth.bytes()),
        bytes(tolerance)
    );
}

pub fn budgets(budgets: &[Budget]) {
    println!();
    println!("== Budgets ==");
    for b in budgets {
        println!("{}  {}", if b.pass { "PASS" } else { "FAIL" }, b.text);
    }
}
