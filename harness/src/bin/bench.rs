//! `make bench`: per-request cost of the ping_auth filter in the Kong-like
//! host emulator and natively, `.wasm` size by crate, linear memory, and the
//! budgets (see docs/performance.md). Exits with 1 when a budget fails.
//!
//! `--quick`: a smoke run with about ten times fewer samples.

use ping_auth_harness::bench::{self, Counts};

fn main() -> anyhow::Result<()> {
    let mut quick = false;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--quick" => quick = true,
            "-h" | "--help" => {
                println!("usage: bench [--quick]");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} (usage: bench [--quick])"),
        }
    }
    let counts = if quick {
        Counts::quick()
    } else {
        Counts::full()
    };
    if !bench::run(counts, quick)? {
        std::process::exit(1);
    }
    Ok(())
}
