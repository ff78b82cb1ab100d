//! `make bench`: per-request cost of the ping_auth filter in the Kong-like
//! host emulator and natively, `.wasm` size by crate, linear memory, and the
//! budgets (see docs/performance.md). Exits with 1 when a budget fails.
//!
//! `--quick`: a smoke run with about ten times fewer samples.
//! `--only KEY[,KEY...]`: only these scenarios (e.g. `--only cached` under
//! `perf record`); the budgets of the others are not checked.

use ping_auth_harness::bench::{self, Counts};

fn main() -> anyhow::Result<()> {
    const USAGE: &str = "usage: bench [--quick] [--only KEY[,KEY...]]";
    let mut quick = false;
    let mut only = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => quick = true,
            "--only" => {
                let Some(keys) = args.next() else {
                    anyhow::bail!("--only needs scenario keys ({USAGE})");
                };
                only.extend(keys.split(',').map(str::to_owned));
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => anyhow::bail!("unknown argument {other:?} ({USAGE})"),
        }
    }
    let counts = if quick {
        Counts::quick()
    } else {
        Counts::full()
    };
    if !bench::run(counts, quick, &only)? {
        std::process::exit(1);
    }
    Ok(())
}
