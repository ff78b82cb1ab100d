//! A local stand-in for Kong, for demos without Docker: one route, one
//! service, one filter chain, run through the host emulator.
//!
//! ```text
//! kong-emu --wasm dist/ping_auth.wasm --listen 127.0.0.1:8000 \
//!          --service http://127.0.0.1:9000 --route /echo --config config.json \
//!          [--strip-path] [--preserve-host] [--filter-name ping_auth] \
//!          [--trusted-ca ca.pem | --no-tls-verify] [--log-level info] [--plain]
//! ```
//!
//! The emulator serves clients through `ping_auth_harness::gateway` (one
//! nginx worker, one Wasm instance, many keep-alive connections). Log lines go
//! to stderr in the shape of Kong's error log.

use anyhow::{anyhow, bail, Context, Result};
use ping_auth_harness::emulator::{
    Emulator, FilterEntry, HostOptions, LogLevel, LogRecord, Route, Service,
};
use ping_auth_harness::gateway::Gateway;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: kong-emu --wasm FILE --service URL --route PATH [--route PATH ...] \
[--config FILE] [--listen ADDR (127.0.0.1:8000)] [--strip-path] [--preserve-host] \
[--filter-name NAME] [--trusted-ca PEM | --no-tls-verify] [--log-level debug|info|notice|warn|error] [--plain]";

struct Args {
    wasm: PathBuf,
    listen: String,
    service: String,
    routes: Vec<String>,
    config: Option<PathBuf>,
    strip_path: bool,
    preserve_host: bool,
    filter_name: Option<String>,
    trusted_ca: Option<PathBuf>,
    no_tls_verify: bool,
    log_level: LogLevel,
    plain: bool,
}

fn parse_args() -> Result<Option<Args>> {
    let mut wasm = None;
    let mut listen = "127.0.0.1:8000".to_string();
    let mut service = None;
    let mut routes = Vec::new();
    let mut config = None;
    let mut strip_path = false;
    let mut preserve_host = false;
    let mut filter_name = None;
    let mut trusted_ca = None;
    let mut no_tls_verify = false;
    let mut log_level = LogLevel::Info;
    let mut plain = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--wasm" => wasm = Some(PathBuf::from(value()?)),
            "--listen" => listen = value()?,
            "--service" => service = Some(value()?),
            "--route" => routes.push(value()?),
            "--config" => config = Some(PathBuf::from(value()?)),
            "--filter-name" => filter_name = Some(value()?),
            "--trusted-ca" => trusted_ca = Some(PathBuf::from(value()?)),
            "--log-level" => {
                log_level = match value()?.as_str() {
                    "debug" => LogLevel::Debug,
                    "info" => LogLevel::Info,
                    "notice" | "warn" => LogLevel::Warn,
                    "error" => LogLevel::Error,
                    other => bail!("unknown log level {other}"),
                }
            }
            "--strip-path" => strip_path = true,
            "--preserve-host" => preserve_host = true,
            "--no-tls-verify" => no_tls_verify = true,
            "--plain" => plain = true,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let wasm = wasm.ok_or_else(|| anyhow!("--wasm is required\n{USAGE}"))?;
    let service = service.ok_or_else(|| anyhow!("--service is required\n{USAGE}"))?;
    if routes.is_empty() {
        routes.push("/".to_string());
    }
    if trusted_ca.is_some() && no_tls_verify {
        bail!("--trusted-ca and --no-tls-verify exclude each other");
    }
    Ok(Some(Args {
        wasm,
        listen,
        service,
        routes,
        config,
        strip_path,
        preserve_host,
        filter_name,
        trusted_ca,
        no_tls_verify,
        log_level,
        plain,
    }))
}

/// `http://host:port/path` → a Kong Service.
fn parse_service(url: &str) -> Result<Service> {
    let (protocol, rest) = url
        .split_once("://")
        .ok_or_else(|| anyhow!("--service must look like http://host:port[/path]"))?;
    if protocol != "http" && protocol != "https" {
        bail!("--service protocol must be http or https");
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (
            rest.get(..i).unwrap_or(rest),
            Some(rest.get(i..).unwrap_or("/").to_string()),
        ),
        None => (rest, None),
    };
    let default_port = if protocol == "https" { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse::<u16>().context("bad service port")?),
        None => (authority.to_string(), default_port),
    };
    let mut service = Service::new("kong-emu-service", protocol, &host, port);
    service.path = path;
    Ok(service)
}

fn level_name(level: LogLevel) -> &'static str {
    match level {
        LogLevel::Trace | LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
        LogLevel::Critical => "crit",
    }
}

/// Prints log lines like Kong's error log.
fn print_logs(logs: Vec<LogRecord>, min: LogLevel, filter: &str) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (h, m, s) = ((now / 3600) % 24, (now / 60) % 60, now % 60);
    let pid = std::process::id();
    for l in logs {
        if l.level < min {
            continue;
        }
        let source = if l.from_filter {
            format!("[proxy-wasm][\"{filter}\" #{}] ", l.context_id)
        } else {
            "[wasm] ".to_string()
        };
        eprintln!(
            "{h:02}:{m:02}:{s:02} [{}] {pid}#0: {source}{}",
            level_name(l.level),
            l.message
        );
    }
}

fn run() -> Result<()> {
    let Some(args) = parse_args()? else {
        return Ok(());
    };
    let config = match &args.config {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => Vec::new(),
    };
    let filter = args.filter_name.clone().unwrap_or_else(|| {
        args.wasm
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "filter".to_string())
    });
    let opts = HostOptions {
        kong: !args.plain,
        tls_verify_cert: !args.no_tls_verify,
        tls_verify_host: !args.no_tls_verify,
        tls_trusted_certificate: args.trusted_ca.clone(),
        ..HostOptions::default()
    };
    let mut emu = Emulator::new(&args.wasm, opts)
        .with_context(|| format!("loading {}", args.wasm.display()))?;
    let service = parse_service(&args.service)?;
    let mut route = Route::new("kong-emu-route", &[]);
    route.paths = args.routes.clone();
    route.strip_path = args.strip_path;
    route.preserve_host = args.preserve_host;
    let chain = emu
        .add_chain(service, route, vec![FilterEntry::new(&filter, config)])
        .map_err(|e| {
            print_logs(e.logs.clone(), LogLevel::Debug, &filter);
            anyhow!("the filter refused its configuration: {e}")
        })?;
    print_logs(emu.take_logs(), args.log_level, &filter);

    let port = args
        .listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .unwrap_or(8000);
    let min = args.log_level;
    let sink_filter = filter.clone();
    let gateway = Gateway::start(
        emu,
        chain,
        &args.listen,
        port,
        Some(Box::new(move |logs| print_logs(logs, min, &sink_filter))),
    )
    .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "kong-emu: listening on http://{} (filter \"{filter}\", routes {:?} -> {})",
        gateway.addr(),
        args.routes,
        args.service
    );
    // Serves until the process is stopped.
    loop {
        std::thread::park();
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("kong-emu: {error:#}");
            ExitCode::FAILURE
        }
    }
}
