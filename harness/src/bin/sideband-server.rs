//! A Sideband API policy server for local demos.
//!
//! ```text
//! sideband-server --policy examples/demo-policy.json --listen 127.0.0.1:9443
//!                 [--tls-cert server.pem --tls-key server.key | --tls-self-signed DIR]
//! ```
//!
//! It prints its address, then one line per decision on stderr, and runs until
//! it is stopped (Ctrl-C).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use ping_auth_harness::certs::{server_config_from_pem_files, TestPki};
use ping_auth_harness::policy::{Policy, PolicyServer};

const USAGE: &str = "usage: sideband-server --policy FILE [--listen ADDR] \
[--tls-cert PEM --tls-key PEM | --tls-self-signed DIR]
  --policy FILE            the JSON policy file (see docs/policy-server.md)
  --listen ADDR            address to listen on (default 127.0.0.1:9443)
  --tls-cert/--tls-key     serve HTTPS with this certificate chain and key
  --tls-self-signed DIR    serve HTTPS with a new test PKI written to DIR (ca.pem, server.pem, server.key)";

struct Options {
    policy: PathBuf,
    listen: String,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    tls_self_signed: Option<PathBuf>,
}

fn parse_args() -> Result<Options> {
    let mut policy = None;
    let mut listen = "127.0.0.1:9443".to_string();
    let mut tls_cert = None;
    let mut tls_key = None;
    let mut tls_self_signed = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--help" || arg == "-h" {
            println!("{USAGE}");
            std::process::exit(0);
        }
        let value = args.next().ok_or_else(|| anyhow!("{arg} needs a value"))?;
        match arg.as_str() {
            "--policy" => policy = Some(PathBuf::from(value)),
            "--listen" => listen = value,
            "--tls-cert" => tls_cert = Some(PathBuf::from(value)),
            "--tls-key" => tls_key = Some(PathBuf::from(value)),
            "--tls-self-signed" => tls_self_signed = Some(PathBuf::from(value)),
            _ => bail!("unknown option {arg}"),
        }
    }
    let policy = policy.ok_or_else(|| anyhow!("--policy is required"))?;
    if tls_cert.is_some() != tls_key.is_some() {
        bail!("--tls-cert and --tls-key go together");
    }
    if tls_cert.is_some() && tls_self_signed.is_some() {
        bail!("use either --tls-cert/--tls-key or --tls-self-signed");
    }
    Ok(Options {
        policy,
        listen,
        tls_cert,
        tls_key,
        tls_self_signed,
    })
}

fn run(options: Options) -> Result<()> {
    let policy = Policy::from_file(&options.policy)?;
    let tls = match (
        &options.tls_cert,
        &options.tls_key,
        &options.tls_self_signed,
    ) {
        (Some(cert), Some(key), _) => Some(server_config_from_pem_files(cert, key)?),
        (_, _, Some(dir)) => {
            let pki = TestPki::generate_in(dir)?;
            eprintln!(
                "test PKI written to {} (trust {})",
                dir.display(),
                pki.ca_cert_path.display()
            );
            Some(pki.server_config()?)
        }
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let summary = format!(
        "{} request rule(s), {} response rule(s), context method {}, secret header {}, {} secret(s)",
        policy.request_rules.len(),
        policy.response_rules.len(),
        policy.request_context_method,
        policy.secret_header_name,
        policy.shared_secrets.len()
    );
    let server = PolicyServer::start(policy, &options.listen, tls)
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    println!("sideband-server listening on {scheme}://{}", server.addr());
    println!("policy {}: {summary}", options.policy.display());
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(error) => {
            eprintln!("sideband-server: {error}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("sideband-server: {error:#}");
            ExitCode::FAILURE
        }
    }
}
