//! The echo upstream for local demos.
//!
//! ```text
//! echo-upstream [--listen 127.0.0.1:9000] [--tls-cert PEM --tls-key PEM]
//! ```
//!
//! Answers every request with JSON describing it; see `ping_auth_harness::upstream`
//! for the path conventions (`/status/<code>`, `/chunked/…`, `/bytes/<n>`,
//! `/slow/<ms>`, `/json/<name>`, `?header=Name:Value`). Runs until stopped.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ping_auth_harness::certs::server_config_from_pem_files;
use ping_auth_harness::upstream::Upstream;

const USAGE: &str =
    "usage: echo-upstream [--listen ADDR (default 127.0.0.1:9000)] [--tls-cert PEM --tls-key PEM]";

fn run() -> Result<()> {
    let mut listen = "127.0.0.1:9000".to_string();
    let mut tls_cert = None;
    let mut tls_key = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            println!("{USAGE}");
            return Ok(());
        }
        let value = args.next().ok_or_else(|| anyhow!("{arg} needs a value"))?;
        match arg.as_str() {
            "--listen" => listen = value,
            "--tls-cert" => tls_cert = Some(PathBuf::from(value)),
            "--tls-key" => tls_key = Some(PathBuf::from(value)),
            _ => bail!("unknown option {arg}\n{USAGE}"),
        }
    }
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(server_config_from_pem_files(&cert, &key)?),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let upstream =
        Upstream::start(&listen, tls).with_context(|| format!("cannot listen on {listen}"))?;
    println!("echo-upstream listening on {scheme}://{}", upstream.addr());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("echo-upstream: {error:#}");
            ExitCode::FAILURE
        }
    }
}
