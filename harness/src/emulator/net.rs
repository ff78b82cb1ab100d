//! The blocking HTTP/1.1 client used for dispatch calls and for proxying to
//! the service. Each operation runs on its own helper thread and reports back
//! over the host's completion channel ([`Completion`]).
//!
//! Dispatch calls follow ngx_wasm_module's socket: one new connection per
//! call, `Connection: close`, the timeout applied separately to connect (and
//! TLS handshake), send and each read, a response that needs `Content-Length`
//! or `chunked` for its body, and the host's failure statuses.

use super::headers::HeaderList;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{ring as ring_provider, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A completed network operation, sent back from a helper thread over the
/// host's completion channel.
pub(crate) enum Completion {
    Dispatch {
        token: u32,
        result: CallResult,
    },
    Upstream {
        stream: u64,
        job: u64,
        result: Result<UpstreamResponse, UpstreamError>,
    },
}

/// `:dispatch_status` values (the host's socket statuses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SockStatus {
    Ok,
    Timeout,
    BrokenConnection,
    TlsFailure,
    ResolverFailure,
    ReaderFailure,
    InternalFailure,
}

impl SockStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SockStatus::Ok => "ok",
            SockStatus::Timeout => "timeout",
            SockStatus::BrokenConnection => "broken connection",
            SockStatus::TlsFailure => "tls handshake failure",
            SockStatus::ResolverFailure => "resolver failure",
            SockStatus::ReaderFailure => "reader failure",
            SockStatus::InternalFailure => "internal failure",
        }
    }
}

/// The outcome of a dispatch call as the filter sees it.
#[derive(Clone, Debug)]
pub(crate) struct CallResult {
    pub status: SockStatus,
    /// The host's error text (`tcp socket - Connection refused`), empty on success.
    pub error: String,
    /// HTTP status; 0 when no response was read.
    pub status_code: u16,
    pub headers: HeaderList,
    pub body: Vec<u8>,
    /// Set when the read timed out after the head and part of a
    /// `Content-Length` body: the bytes received. The host then reports this
    /// length as `body_size` but keeps no body buffer, so reading the call
    /// response body answers BadArgument.
    pub partial_body: Option<usize>,
}

impl CallResult {
    fn failed(status: SockStatus, error: String) -> Self {
        Self {
            status,
            error,
            status_code: 0,
            headers: HeaderList::new(),
            body: Vec::new(),
            partial_body: None,
        }
    }

    /// The `body_size` argument of `on_http_call_response`
    /// (`http_reader.body_len`).
    pub fn body_size(&self) -> usize {
        self.partial_body.unwrap_or(self.body.len())
    }
}

/// A dispatch call ready to be sent.
pub(crate) struct DispatchRequest {
    /// Host name or IP (no brackets, no port).
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// Name for SNI and certificate checks (`:authority` or the host, no port).
    pub sni: String,
    /// The request line and headers, already serialised.
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    pub timeout: Duration,
}

/// A request Kong proxies to the service.
pub(crate) struct UpstreamRequest {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub sni: String,
    pub head: Vec<u8>,
    pub body: Vec<u8>,
    pub connect_timeout: Duration,
    pub send_timeout: Duration,
    pub read_timeout: Duration,
    pub head_request: bool,
}

/// The service's response.
pub(crate) struct UpstreamResponse {
    pub status: u16,
    pub headers: HeaderList,
    pub body: Vec<u8>,
    pub chunked: bool,
    pub content_length: Option<u64>,
    pub addr: String,
}

/// Why proxying failed: nginx answers 502 or 504.
pub(crate) struct UpstreamError {
    pub status: u16,
    pub message: String,
}

/// The host's TLS settings for dispatch calls.
pub(crate) struct TlsSettings {
    config: Result<Arc<ClientConfig>, String>,
    /// Client config that verifies nothing (proxying to https services).
    insecure: Result<Arc<ClientConfig>, String>,
}

impl TlsSettings {
    pub fn new(verify_cert: bool, verify_host: bool, ca: Option<&Path>) -> Self {
        Self {
            config: build_config(verify_cert, verify_host, ca),
            insecure: build_config(false, false, None),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring_provider::default_provider())
}

fn build_config(
    verify_cert: bool,
    verify_host: bool,
    ca: Option<&Path>,
) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca {
        let pem = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| format!("parsing {}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("adding {}: {e}", path.display()))?;
        }
    }
    let roots = Arc::new(roots);
    let algorithms = provider.signature_verification_algorithms;
    let webpki: Option<Arc<WebPkiServerVerifier>> = if verify_cert && !roots.is_empty() {
        Some(
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| e.to_string())?,
        )
    } else {
        None
    };
    let verifier = Arc::new(HostVerifier {
        verify_cert,
        verify_host,
        webpki,
        algorithms,
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Certificate checks as ngx_wasm_module makes them: the chain against
/// `tls_trusted_certificate` only (no system store), the name against the SNI.
#[derive(Debug)]
struct HostVerifier {
    verify_cert: bool,
    verify_host: bool,
    webpki: Option<Arc<WebPkiServerVerifier>>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for HostVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.verify_cert {
            let Some(webpki) = &self.webpki else {
                // No CA configured: OpenSSL reports "unable to get local issuer certificate".
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                ));
            };
            match webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
                Ok(ok) => return Ok(ok),
                Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForName,
                ))
                | Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidForNameContext { .. },
                )) if !self.verify_host => return Ok(ServerCertVerified::assertion()),
                Err(e) => return Err(e),
            }
        }
        if self.verify_host {
            let cert = webpki::EndEntityCert::try_from(end_entity).map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
            })?;
            cert.verify_is_valid_for_subject_name(server_name)
                .map_err(|_| {
                    rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)
                })?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// A plain or TLS connection with the host's timeouts and a cancel flag.
struct Conn {
    tcp: TcpStream,
    tls: Option<ClientConnection>,
    cancel: Arc<AtomicBool>,
}

/// How long a blocking read waits before checking the cancel flag.
const POLL: Duration = Duration::from_millis(50);

enum IoFail {
    Timeout,
    Cancelled,
    Eof,
    /// Any other socket error (reported as a broken connection).
    Other,
}

impl Conn {
    fn write_all(&mut self, data: &[u8], timeout: Duration) -> Result<(), IoFail> {
        let _ = self
            .tcp
            .set_write_timeout(Some(timeout.max(Duration::from_millis(1))));
        match &mut self.tls {
            None => self.tcp.write_all(data).map_err(map_io),
            Some(tls) => {
                let mut stream = rustls::Stream::new(tls, &mut self.tcp);
                stream.write_all(data).map_err(map_io)?;
                stream.flush().map_err(map_io)
            }
        }
    }

    /// Reads some bytes, waiting at most `timeout` of silence.
    fn read_some(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize, IoFail> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.cancel.load(Ordering::SeqCst) {
                return Err(IoFail::Cancelled);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(IoFail::Timeout);
            }
            let _ = self
                .tcp
                .set_read_timeout(Some(left.min(POLL).max(Duration::from_millis(1))));
            let r = match &mut self.tls {
                None => self.tcp.read(buf),
                Some(tls) => rustls::Stream::new(tls, &mut self.tcp).read(buf),
            };
            match r {
                Ok(0) => return Err(IoFail::Eof),
                Ok(n) => return Ok(n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(IoFail::Eof),
                Err(_) => return Err(IoFail::Other),
            }
        }
    }
}

fn map_io(e: io::Error) -> IoFail {
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => IoFail::Timeout,
        _ => IoFail::Other,
    }
}

/// Resolves `host` (IPv4 first, as Kong's DNS client asks for A records).
fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|_| "resolver error: Host not found".to_string())?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| "resolver error: Host not found".to_string())
}

/// A TLS server name from `name`; `None` for an IP literal or an empty name
/// (the host cannot derive an SNI from them).
fn sni_name(name: &str) -> Option<ServerName<'static>> {
    if name.is_empty() || name.parse::<IpAddr>().is_ok() {
        return None;
    }
    ServerName::try_from(name.to_string()).ok()
}

fn handshake(
    conn: &mut Conn,
    config: &Arc<ClientConfig>,
    name: ServerName<'static>,
    timeout: Duration,
) -> Result<(), String> {
    let mut tls = ClientConnection::new(config.clone(), name).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + timeout;
    let _ = conn
        .tcp
        .set_write_timeout(Some(timeout.max(Duration::from_millis(1))));
    while tls.is_handshaking() {
        if conn.cancel.load(Ordering::SeqCst) {
            return Err("cancelled".to_string());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("tls handshake timed out".to_string());
        }
        let _ = conn
            .tcp
            .set_read_timeout(Some(left.min(POLL).max(Duration::from_millis(1))));
        match tls.complete_io(&mut conn.tcp) {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(describe_tls_error(&e)),
        }
    }
    conn.tls = Some(tls);
    Ok(())
}

fn describe_tls_error(e: &io::Error) -> String {
    let text = e.to_string();
    if text.contains("UnknownIssuer") || text.contains("unknown issuer") {
        "tls certificate verify error: (20:unable to get local issuer certificate)".to_string()
    } else if text.contains("NotValidForName") || text.contains("not valid for name") {
        "tls certificate CN does not match sni".to_string()
    } else if text.contains("Expired") {
        "tls certificate verify error: (10:certificate has expired)".to_string()
    } else {
        format!("tls handshake failed ({text})")
    }
}

/// Runs a dispatch call and reports its [`CallResult`].
pub(crate) fn spawn_dispatch(
    tx: Sender<Completion>,
    token: u32,
    req: DispatchRequest,
    tls: Arc<TlsSettings>,
    cancel: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("emu-dispatch-{token}"))
        .spawn(move || {
            let result = run_dispatch(&req, &tls, cancel);
            let _ = tx.send(Completion::Dispatch { token, result });
        })
}

fn run_dispatch(req: &DispatchRequest, tls: &TlsSettings, cancel: Arc<AtomicBool>) -> CallResult {
    let target = format!("{}:{}", req.host, req.port);
    let addr = match resolve(&req.host, req.port) {
        Ok(a) => a,
        Err(e) => {
            return CallResult::failed(SockStatus::ResolverFailure, format!("tcp socket - {e}"))
        }
    };
    let tcp = match TcpStream::connect_timeout(&addr, req.timeout.max(Duration::from_millis(1))) {
        Ok(t) => t,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
            ) =>
        {
            return CallResult::failed(
                SockStatus::Timeout,
                format!("tcp socket - timed out connecting to \"{target}\""),
            )
        }
        Err(e) => {
            return CallResult::failed(
                SockStatus::BrokenConnection,
                format!("tcp socket - {}", os_error_text(&e)),
            )
        }
    };
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn {
        tcp,
        tls: None,
        cancel,
    };
    if req.tls {
        let Some(name) = sni_name(&req.sni) else {
            return CallResult::failed(
                SockStatus::TlsFailure,
                format!("tcp socket - could not derive tls sni from host (\"{target}\")"),
            );
        };
        let config = match &tls.config {
            Ok(c) => c.clone(),
            Err(e) => {
                return CallResult::failed(SockStatus::InternalFailure, format!("tcp socket - {e}"))
            }
        };
        if let Err(e) = handshake(&mut conn, &config, name, req.timeout) {
            return CallResult::failed(SockStatus::TlsFailure, format!("tcp socket - {e}"));
        }
    }
    let mut out = req.head.clone();
    out.extend_from_slice(&req.body);
    match conn.write_all(&out, req.timeout) {
        Ok(()) => {}
        Err(IoFail::Timeout) => {
            return CallResult::failed(
                SockStatus::Timeout,
                format!("tcp socket - timed out writing to \"{target}\""),
            )
        }
        Err(_) => {
            return CallResult::failed(
                SockStatus::BrokenConnection,
                "tcp socket - broken pipe".into(),
            )
        }
    }
    match read_response(&mut conn, req.timeout, false, false) {
        Ok(resp) => CallResult {
            status: SockStatus::Ok,
            error: String::new(),
            status_code: resp.status,
            headers: resp.headers,
            body: resp.body,
            partial_body: None,
        },
        // Seen on a real build: the status line and headers were parsed and
        // part of the body buffered when the read timed out. The host still
        // gives the head to the filter (`:status`, `:dispatch_status:
        // timeout`) and the partial length, without a readable body.
        Err(ReadFail::BodyTimeout {
            status,
            headers,
            received,
        }) => CallResult {
            status: SockStatus::Timeout,
            error: format!("tcp socket - timed out reading from \"{target}\""),
            status_code: status,
            headers,
            body: Vec::new(),
            partial_body: Some(received),
        },
        Err(ReadFail::Timeout) => CallResult::failed(
            SockStatus::Timeout,
            format!("tcp socket - timed out reading from \"{target}\""),
        ),
        Err(ReadFail::Parse) => CallResult::failed(
            SockStatus::ReaderFailure,
            "tcp socket - parser error".into(),
        ),
        Err(ReadFail::Closed) | Err(ReadFail::Cancelled) => CallResult::failed(
            SockStatus::BrokenConnection,
            "tcp socket - connection closed prematurely".into(),
        ),
    }
}

/// The OS error text nginx would log ("Connection refused").
fn os_error_text(e: &io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text.get(..i).unwrap_or(&text).to_string(),
        None => text,
    }
}

enum ReadFail {
    Timeout,
    /// Timed out after the head and at least one byte of a
    /// `Content-Length` body.
    BodyTimeout {
        status: u16,
        headers: HeaderList,
        received: usize,
    },
    Parse,
    Closed,
    Cancelled,
}

struct ParsedResponse {
    status: u16,
    headers: HeaderList,
    body: Vec<u8>,
    chunked: bool,
    content_length: Option<u64>,
}

/// The largest status line + headers block the host accepts
/// (`wasm_socket_large_buffers 4 8192`: one buffer).
const MAX_HEADER_BLOCK: usize = 8192;

/// Reads one HTTP/1.x response. With `until_eof`, a body without length is
/// read until the peer closes (proxying); otherwise it is left unread
/// (the dispatch reader).
fn read_response(
    conn: &mut Conn,
    timeout: Duration,
    until_eof: bool,
    head_request: bool,
) -> Result<ParsedResponse, ReadFail> {
    let mut buf: Vec<u8> = Vec::new();
    let mut tmp = [0u8; 4096];
    let header_end = loop {
        if let Some(pos) = find(&buf, b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > MAX_HEADER_BLOCK {
            return Err(ReadFail::Parse);
        }
        match conn.read_some(&mut tmp, timeout) {
            Ok(n) => buf.extend_from_slice(tmp.get(..n).unwrap_or_default()),
            Err(IoFail::Timeout) => return Err(ReadFail::Timeout),
            Err(IoFail::Cancelled) => return Err(ReadFail::Cancelled),
            Err(IoFail::Eof) | Err(IoFail::Other) => {
                return Err(if buf.is_empty() {
                    ReadFail::Closed
                } else {
                    ReadFail::Parse
                })
            }
        }
    };
    if header_end > MAX_HEADER_BLOCK {
        return Err(ReadFail::Parse);
    }
    let head = buf.get(..header_end).unwrap_or_default();
    let (status, headers) = parse_head(head).ok_or(ReadFail::Parse)?;
    let mut rest = buf.get(header_end..).unwrap_or_default().to_vec();

    let chunked = headers.get_all(b"Transfer-Encoding").iter().any(|v| {
        String::from_utf8_lossy(v)
            .to_ascii_lowercase()
            .contains("chunked")
    });
    let content_length = if chunked {
        None
    } else {
        match headers.get(b"Content-Length") {
            Some(v) => Some(
                std::str::from_utf8(v)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
                    .ok_or(ReadFail::Parse)?,
            ),
            None => None,
        }
    };
    let no_body = head_request || status == 204 || status == 304 || (100..200).contains(&status);
    let body = if no_body {
        Vec::new()
    } else if chunked {
        read_chunked(conn, &mut rest, timeout)?
    } else if let Some(len) = content_length {
        let len = usize::try_from(len).map_err(|_| ReadFail::Parse)?;
        while rest.len() < len {
            match conn.read_some(&mut tmp, timeout) {
                Ok(n) => rest.extend_from_slice(tmp.get(..n).unwrap_or_default()),
                Err(IoFail::Timeout) if !rest.is_empty() => {
                    return Err(ReadFail::BodyTimeout {
                        status,
                        headers,
                        received: rest.len(),
                    })
                }
                Err(IoFail::Timeout) => return Err(ReadFail::Timeout),
                Err(IoFail::Cancelled) => return Err(ReadFail::Cancelled),
                Err(_) => return Err(ReadFail::Closed),
            }
        }
        rest.truncate(len);
        rest
    } else if until_eof {
        loop {
            match conn.read_some(&mut tmp, timeout) {
                Ok(n) => rest.extend_from_slice(tmp.get(..n).unwrap_or_default()),
                Err(IoFail::Eof) => break,
                Err(IoFail::Timeout) => return Err(ReadFail::Timeout),
                Err(IoFail::Cancelled) => return Err(ReadFail::Cancelled),
                Err(IoFail::Other) => break,
            }
        }
        rest
    } else {
        Vec::new()
    };
    Ok(ParsedResponse {
        status,
        headers,
        body,
        chunked,
        content_length,
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Parses `HTTP/1.x NNN reason` and the header lines.
fn parse_head(head: &[u8]) -> Option<(u16, HeaderList)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    if !(100..1000).contains(&status) {
        return None;
    }
    let mut headers = HeaderList::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        let (name, value) = line.split_once(':')?;
        if name.is_empty() || name.contains(' ') {
            return None;
        }
        headers.push_raw(name.as_bytes(), value.trim().as_bytes());
    }
    Some((status, headers))
}

fn read_chunked(
    conn: &mut Conn,
    rest: &mut Vec<u8>,
    timeout: Duration,
) -> Result<Vec<u8>, ReadFail> {
    let mut body = Vec::new();
    let mut tmp = [0u8; 4096];
    let mut more = |conn: &mut Conn, rest: &mut Vec<u8>| -> Result<(), ReadFail> {
        match conn.read_some(&mut tmp, timeout) {
            Ok(n) => {
                rest.extend_from_slice(tmp.get(..n).unwrap_or_default());
                Ok(())
            }
            Err(IoFail::Timeout) => Err(ReadFail::Timeout),
            Err(IoFail::Cancelled) => Err(ReadFail::Cancelled),
            Err(_) => Err(ReadFail::Closed),
        }
    };
    loop {
        let line_end = loop {
            if let Some(p) = find(rest, b"\r\n") {
                break p;
            }
            if rest.len() > 1024 {
                return Err(ReadFail::Parse);
            }
            more(conn, rest)?;
        };
        let line = std::str::from_utf8(rest.get(..line_end).unwrap_or_default())
            .map_err(|_| ReadFail::Parse)?;
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| ReadFail::Parse)?;
        rest.drain(..line_end + 2);
        if size == 0 {
            // Trailers, then the final CRLF.
            loop {
                if let Some(p) = find(rest, b"\r\n") {
                    let empty = p == 0;
                    rest.drain(..p + 2);
                    if empty {
                        return Ok(body);
                    }
                    continue;
                }
                more(conn, rest)?;
            }
        }
        while rest.len() < size + 2 {
            more(conn, rest)?;
        }
        body.extend_from_slice(rest.get(..size).unwrap_or_default());
        if rest.get(size..size + 2) != Some(b"\r\n".as_slice()) {
            return Err(ReadFail::Parse);
        }
        rest.drain(..size + 2);
    }
}

/// Proxies one request to the service and reports the response.
pub(crate) fn spawn_upstream(
    tx: Sender<Completion>,
    stream: u64,
    job: u64,
    req: UpstreamRequest,
    tls: Arc<TlsSettings>,
    cancel: Arc<AtomicBool>,
) -> io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("emu-upstream-{stream}"))
        .spawn(move || {
            let result = run_upstream(&req, &tls, cancel);
            let _ = tx.send(Completion::Upstream {
                stream,
                job,
                result,
            });
        })
}

fn run_upstream(
    req: &UpstreamRequest,
    tls: &TlsSettings,
    cancel: Arc<AtomicBool>,
) -> Result<UpstreamResponse, UpstreamError> {
    let fail = |status: u16, message: String| UpstreamError { status, message };
    let addr = resolve(&req.host, req.port)
        .map_err(|e| fail(502, format!("{} could not be resolved ({e})", req.host)))?;
    let tcp = TcpStream::connect_timeout(&addr, req.connect_timeout.max(Duration::from_millis(1)))
        .map_err(|e| match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => fail(
                504,
                "upstream timed out while connecting to upstream".into(),
            ),
            _ => fail(
                502,
                format!(
                    "connect() failed ({}) while connecting to upstream",
                    os_error_text(&e)
                ),
            ),
        })?;
    let _ = tcp.set_nodelay(true);
    let mut conn = Conn {
        tcp,
        tls: None,
        cancel,
    };
    if req.tls {
        let config = tls
            .insecure
            .as_ref()
            .map_err(|e| fail(502, e.clone()))?
            .clone();
        let name = sni_name(&req.sni)
            .or_else(|| ServerName::try_from(req.host.clone()).ok())
            .ok_or_else(|| fail(502, "no TLS server name".into()))?;
        handshake(&mut conn, &config, name, req.connect_timeout)
            .map_err(|e| fail(502, format!("SSL_do_handshake() failed: {e}")))?;
    }
    let mut out = req.head.clone();
    out.extend_from_slice(&req.body);
    conn.write_all(&out, req.send_timeout)
        .map_err(|e| match e {
            IoFail::Timeout => fail(504, "upstream timed out while sending request".into()),
            _ => fail(
                502,
                "writev() failed while sending request to upstream".into(),
            ),
        })?;
    let resp = read_response(&mut conn, req.read_timeout, true, req.head_request).map_err(|e| match e {
        ReadFail::Timeout | ReadFail::BodyTimeout { .. } => fail(504, "upstream timed out while reading response header from upstream".into()),
        ReadFail::Parse => fail(502, "upstream sent invalid header while reading response header from upstream".into()),
        ReadFail::Closed | ReadFail::Cancelled => {
            fail(502, "upstream prematurely closed connection while reading response header from upstream".into())
        }
    })?;
    Ok(UpstreamResponse {
        status: resp.status,
        headers: resp.headers,
        body: resp.body,
        chunked: resp.chunked,
        content_length: resp.content_length,
        addr: addr.to_string(),
    })
}
