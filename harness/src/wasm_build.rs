//! Builds a workspace filter crate to `.wasm` once per test process.
//!
//! Tests call [`build`] with a package name; the first call runs
//! `cargo build --release --target wasm32-wasip1 -p <package>` into a separate
//! target directory (`<workspace>/target/wasm-tests`) so the nested cargo does
//! not wait on the lock held by the outer `cargo test`. Later calls return the
//! cached path. Set `PING_AUTH_WASM=/path/to/ping_auth.wasm` to test a prebuilt
//! filter instead of building `ping-auth`.

use anyhow::{anyhow, bail, Context as _};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Paths already built by this process, by package name.
fn cache() -> &'static Mutex<HashMap<String, PathBuf>> {
    static CACHE: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> PathBuf {
    let harness = Path::new(env!("CARGO_MANIFEST_DIR"));
    harness.parent().unwrap_or(harness).to_path_buf()
}

/// Builds `package` for `wasm32-wasip1` (release) and returns the `.wasm` path.
///
/// `ping-auth` gives `ping_auth.wasm`, `probe-filter` gives `probe_filter.wasm`.
/// With `PING_AUTH_WASM` set, `build("ping-auth")` returns that file unbuilt.
pub fn build(package: &str) -> anyhow::Result<PathBuf> {
    if package == "ping-auth" {
        if let Some(path) = std::env::var_os("PING_AUTH_WASM") {
            let path = PathBuf::from(path);
            if !path.is_file() {
                bail!("PING_AUTH_WASM={} is not a file", path.display());
            }
            return Ok(path);
        }
    }

    // One build at a time: the lock is held while cargo runs.
    let mut built = cache()
        .lock()
        .map_err(|_| anyhow!("wasm build cache lock poisoned"))?;
    if let Some(path) = built.get(package) {
        return Ok(path.clone());
    }

    let root = workspace_root();
    let target_dir = root.join("target").join("wasm-tests");
    cargo_build(&root, package, &target_dir, &[])?;

    let file = format!("{}.wasm", package.replace('-', "_"));
    let path = target_dir.join("wasm32-wasip1").join("release").join(file);
    if !path.is_file() {
        bail!("build succeeded but {} is missing", path.display());
    }
    built.insert(package.to_string(), path.clone());
    Ok(path)
}

/// Runs `cargo build --release --target wasm32-wasip1 -p <package>` in
/// `workspace` with its own target directory and extra environment
/// variables. Flags meant for the outer (native) build are not passed on.
pub fn cargo_build(
    workspace: &Path,
    package: &str,
    target_dir: &Path,
    env: &[(&str, &str)],
) -> anyhow::Result<()> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(workspace)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip1",
            "-p",
            package,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS");
    for (k, v) in env {
        command.env(k, v);
    }
    let output = command
        .output()
        .with_context(|| format!("running cargo build for {package}"))?;
    if !output.status.success() {
        bail!(
            "cargo build -p {package} --target wasm32-wasip1 failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
