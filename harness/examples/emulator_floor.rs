//! The emulator's own per-request floor: the guest time of the probe filter
//! (which does nothing but log) for a plain GET, measured as `make bench`
//! measures ping_auth. Run: `cargo run --release -p ping-auth-harness --example emulator_floor`.
use ping_auth_harness::emulator::*;
use ping_auth_harness::upstream::Upstream;
fn main() -> anyhow::Result<()> {
    let wasm = ping_auth_harness::wasm_build::build("probe-filter")?;
    let up = Upstream::start("127.0.0.1:0", None)?;
    let mut emu = Emulator::new(&wasm, HostOptions::default())?;
    let chain = emu
        .add_chain(
            Service::new("s", "http", "127.0.0.1", up.addr().port()),
            Route::new("r", &["/"]),
            vec![FilterEntry::new("probe_filter", b"".to_vec())],
        )
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut v = Vec::new();
    for i in 0..300 {
        emu.reset_stats();
        let r = ClientRequest::get("/x");
        let _ = emu.send(chain, r);
        if i >= 50 {
            v.push(emu.stats().guest_time().as_micros());
        }
    }
    v.sort();
    println!(
        "probe filter guest time per request: median {} us, p99 {} us; hostcalls {:?}",
        v[v.len() / 2],
        v[v.len() * 99 / 100],
        emu.stats().hostcalls
    );
    Ok(())
}
